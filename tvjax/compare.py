"""Every task-vector method on equal footing: same model, same splits, same harness.

For each task: means of the heads and of the residual stream at the last token of the
same ICL prompts (one pass), then each method is fitted on the train split (choices on
the valid split) and scored on the test split by `tvjax.evaluation`:

  zero_shot        the plain model
  icl              `shots`-shot prompts
  layer_patching   mean ICL residual state patched in at the best valid layer (Hendel et al. 2023)
  function_vector  top-k heads by indirect effect, summed, added at one layer (Todd et al. 2023)
  reinforce        hard head set searched by REINFORCE (Hojel et al. 2024; Huang et al. 2024)
  task_vector      the soft task vector (`tvjax.fitting`)
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from tvjax.version import __version__
from tvjax.data import Task, Template, load_task, prompts_for
from tvjax.data.suites import expand
from tvjax.evaluation import evaluate
from tvjax.extract import mean_prompts, site_means
from tvjax.fields import COUNT, SEED, check_fields, option
from tvjax.files import write_text
from tvjax.fitting import FitConfig, FitResult, fit_many
from tvjax.function_vectors import FunctionVectorConfig, function_vector_for
from tvjax.patching import layer_patch
from tvjax.reinforce import ReinforceConfig, select_heads
from tvjax.methods import BASELINES, METHODS, labels
from tvjax.report import markdown_table, seconds_table, shared_methods, summary_table, timed
from tvjax.rows import block_of
from tvjax.taskvector import blend_weights, resolve, save_intervention

TASK_FORMATS = (".json", ".jsonl", ".csv", ".tsv")
SITES = ("heads", "resid")  # the means every fitted method draws on


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """Settings shared by every method (means, splits, template) and each method's own."""

    shots: int = option(10, "demonstrations per ICL prompt (the means, the ICL baseline, the function vector's "
                            "prompts)", COUNT)
    n_prompts: int = option(50, "ICL prompts averaged for the means", COUNT)
    seed: int = option(0, "the splits and every method", SEED)
    template: Template = option(Template(), "the prompt template")
    fit: FitConfig = option(FitConfig(), "the soft task vector's settings")
    function_vector: FunctionVectorConfig = option(FunctionVectorConfig(sweep=True), "the function vector's settings")
    reinforce: ReinforceConfig = option(ReinforceConfig(), "REINFORCE's settings")

    def __post_init__(self):
        check_fields(self)


def phases(methods) -> int:
    """How many timed phases `compare_task` runs for `methods`: the means, each fit, each evaluation."""
    fitted = sum(METHODS[m].fitted for m in methods)
    return (fitted > 0) + fitted + len(methods)


def compare_task(model, task: Task, config: CompareConfig = CompareConfig(), methods=METHODS, *,
                 progress=None, save_to=None, model_name: str = "custom", shared: dict | None = None) -> dict:
    """Fit and score each of `methods` (default: all) on `task`.

    Returns a JSON-ready dict: `methods`, `scores[method]` (`Scores.as_dict()`, test split),
    `seconds` per phase (`means`, `fit_<method>`, `eval_<method>`), head `rankings` (`[L, N]`
    lists: soft weights, indirect effects, REINFORCE probabilities) and what each fitted
    method `chose` (layers, heads, best steps). `progress`: a tqdm bar advanced once per phase.
    With `save_to`, each fitted intervention is saved as `<save_to>/<task>.<method>.safetensors`
    (`tvjax.taskvector` format, read by `tvjax eval --intervention`), listed in `files`.
    `shared`: this task's part of `fit_shared` of the tasks compared together (its means, soft
    task vector and their seconds); without it, `fit_shared` of this task alone.
    """
    methods = check_methods(methods)
    if shared is None:
        shared = fit_shared(model, [task], config, methods, progress=progress).get(task.name, {})
    seconds, rankings, chose, interventions = dict(shared.get("seconds", {})), {}, {}, dict.fromkeys(BASELINES)
    means = shared.get("means")
    for method in (m for m in methods if METHODS[m].fitted):
        if method in shared:
            interventions[method], ranking, chose[method] = shared[method]
        else:
            with timed(seconds, f"fit_{method}", progress):
                fit = resolve(METHODS[method].fit)
                interventions[method], ranking, chose[method] = fit(model, task, means, config)
        rankings.update(ranking)
    scores = {}
    for method in methods:  # each intervention acts where its own `positions` says
        with timed(seconds, f"eval_{method}", progress):
            scores[method] = evaluate(model, task, intervention=interventions[method], seed=config.seed,
                                      shots=config.shots if METHODS[method].shots else 0, template=config.template,
                                      desc=f"{method} {task.name}").as_dict()
    files = {}
    for method in (m for m in methods if METHODS[m].fitted and save_to is not None):
        files[method] = str(save_intervention(
            Path(save_to) / f"{task.name}.{method}.safetensors", interventions[method], model.config,
            model=model_name, task=task.name, method=method, seed=config.seed, template=config.template.text,
            shots=config.shots, chose=chose[method], scores=scores.get(method), tvjax_version=__version__))
    return {"task": task.name, "methods": list(methods), "scores": scores, "seconds": seconds, "rankings": rankings,
            "chose": chose, "files": files}


def _mean_prompts(model, task: Task, config: CompareConfig):
    return mean_prompts(model.tokenizer, task, n_prompts=config.n_prompts, shots=config.shots, seed=config.seed,
                        template=config.template)


def check_methods(methods) -> tuple[str, ...]:
    """`methods` in the order of `METHODS`; unknown names are a ValueError."""
    unknown = set(methods) - set(METHODS)
    if unknown or not methods:
        raise ValueError(f"unknown or no methods {sorted(unknown)}; methods: {', '.join(METHODS)}")
    return tuple(m for m in METHODS if m in methods)


def fit_layer_patching(model, task, means, config: CompareConfig):
    patch = layer_patch(model, task, means["resid"], seed=config.seed, template=config.template)
    return patch.edit, {}, {"layer": patch.layer, "valid_losses": patch.layer_losses.tolist()}


def fit_function_vector(model, task, means, config: CompareConfig):
    fv = function_vector_for(model, task, means["heads"], config.function_vector, template=config.template)
    losses = None if fv.layer_losses is None else fv.layer_losses.tolist()
    return fv.edit, {"indirect_effects": fv.effects.tolist()}, {"layer": fv.layer, "heads": fv.heads.tolist(),
                                                                 "valid_losses": losses}


def fit_reinforce(model, task, means, config: CompareConfig):
    found = select_heads(model, task, means["heads"], config.reinforce, template=config.template)
    return found.blend, {"reinforce_probabilities": found.probabilities.tolist()}, {
        "heads": np.argwhere(found.heads).tolist(), "best_step": found.best_step, "history": found.history}


def fit_soft_task_vectors(model, tasks: list[Task], means: list[dict], config: CompareConfig) -> list[tuple]:
    """The soft task vectors of `tasks` from one `fit_many` loop, each as `compare_task` reports
    it: (blend, rankings, what it chose)."""
    fitted = fit_many(model, tasks, [m["heads"] for m in means], config.fit, template=config.template)
    return [(soft.blend, {"soft_weights": blend_weights(soft.blend.theta, soft.blend.base).tolist()},
             {"best_step": soft.best_step, "best_valid_loss": soft.best_valid_loss}) for soft in fitted]


def fit_shared(model, tasks: list[Task], config: CompareConfig = CompareConfig(), methods=METHODS, *,
               progress=None) -> dict[str, dict]:
    """What `compare_task` shares across `tasks` (one or many): every task's means (heads and
    residual) from the same batches and, when `methods` hold it, its soft task vector from one
    `fit_many` loop.

    Returns `compare_task`'s `shared` per task name; each task's seconds are its share (1 / A)
    of the shared phases. A `progress` bar counts each phase once per task.
    """
    methods, A = check_methods(methods), len(tasks)
    if not any(METHODS[m].fitted for m in methods):
        return {}
    seconds = {}
    with timed(seconds, "means", progress, count=A):
        prompts = [_mean_prompts(model, t, config) for t in tasks]
        groups = np.repeat(np.arange(A), [len(p) for p in prompts])
        means = site_means(model, sum(prompts, []), SITES, desc="means" if A == 1 else f"means of {A} tasks",
                           groups=groups)
    per_task = [{s: m[a] for s, m in means.items()} for a in range(A)]
    fits = {}
    for method in (m for m in methods if METHODS[m].together):
        with timed(seconds, f"fit_{method}", progress, count=A):
            fits[method] = resolve(METHODS[method].fit)(model, tasks, per_task, config)
    share = {k: round(v / A, 2) for k, v in seconds.items()}
    return {t.name: {"means": per_task[a], "seconds": share, **{m: fitted[a] for m, fitted in fits.items()}}
            for a, t in enumerate(tasks)}


def task_paths(spec: str) -> list[str]:
    """Tasks named by `spec`: a comma-separated list of built-in names / paths, or a directory of task
    files (each `.json`, `.jsonl`, `.csv`, `.tsv` file, and each subdirectory with train/valid/test.json);
    a downloaded suite's tasks by `suite` or `suite:task,...` (`tvjax.data.suites.expand`)."""
    path = Path(spec)
    if "," not in spec and path.is_dir() and not (path / "train.json").is_file():
        found = sorted(str(p) for p in path.iterdir()
                       if p.suffix.lower() in TASK_FORMATS or (p / "train.json").is_file())
        if not found:
            raise ValueError(f"no task files ({', '.join(TASK_FORMATS)} or train/valid/test directories) in {path}")
        return found
    names = expand(spec)
    if not names:
        raise ValueError("no tasks given")
    return names


GROUP = 16  # tasks fitted together at most: what a failure can cost, and the rows held at once


def task_groups(model, tasks: list[Task], config: CompareConfig, size: int = GROUP) -> list[list[Task]]:
    """`tasks` in groups to fit together (`fit_shared`): tasks of one prompt-length block
    (`tvjax.rows.block_of` of their longest zero-shot valid prompt), so that a short task's
    rows are never padded to a long one's, each block cut into near-equal groups of at most `size`."""
    by_block: dict[int, list[Task]] = {}
    for task in tasks:
        prompts, _ = prompts_for(model.tokenizer, task, "valid", 0, template=config.template, seed=config.seed)
        by_block.setdefault(block_of(max(len(p.ids) for p in prompts)), []).append(task)
    groups = []
    for block in sorted(by_block):
        members, n = by_block[block], -(-len(by_block[block]) // size)
        groups += [members[i * len(members) // n:(i + 1) * len(members) // n] for i in range(n)]
    return groups


def compare(model, tasks: list[str], out, config: CompareConfig = CompareConfig(), methods=METHODS, *,
            redo: bool = False, log=tqdm.write, model_name: str = "custom") -> dict[str, dict]:
    """`compare_task` for each task, each result kept in `<out>/tasks/<task>.json` (reused unless `redo`)
    and each fitted intervention in `<out>/interventions/<task>.<method>.safetensors`. The tasks
    still to run share their means and soft task-vector fit (`fit_shared`) in groups of similar
    prompt length (`task_groups`); each group's results are written before the next group starts.

    A progress bar (on a terminal) counts every task's phases, with the time left.
    """
    results, methods = {}, check_methods(methods)
    loaded = [load_task(spec, config.seed) for spec in tasks]  # every task file checked before the first fit
    paths = {task.name: Path(out) / "tasks" / f"{task.name}.json" for task in loaded}
    pending = [task for task in loaded if redo or not paths[task.name].is_file()]
    for task in loaded:
        if task.name not in {t.name for t in pending}:
            results[task.name] = json.loads(paths[task.name].read_text())
            log(f"{task.name}: reusing {paths[task.name]}")
    bar = tqdm(total=len(pending) * phases(methods), desc="compare", unit="phase", disable=None)
    with bar:
        for group in task_groups(model, pending, config) if pending else []:
            shared = fit_shared(model, group, config, methods, progress=bar)
            for task in group:
                bar.set_description(f"compare {task.name}")
                result = compare_task(model, task, config, methods, progress=bar, model_name=model_name,
                                      save_to=Path(out) / "interventions", shared=shared.get(task.name, {}))
                write_text(paths[task.name], json.dumps(result, indent=1))
                results[task.name] = result
                log(f"{task.name}: " + ", ".join(f"{m} {100 * s['first_token']:.0f}/{100 * s['exact_match']:.0f}"
                                                 for m, s in result["scores"].items()))
    return {task.name: results[task.name] for task in loaded}


def write_report(results: dict[str, dict], out, **info) -> dict[str, Path]:
    """`<out>/compare.json` (results and `info`), `compare.md` (scores, their means over the tasks with
    standard errors and gains over ICL, and seconds), `compare.png`."""
    from tvjax.plot import comparison_chart

    out = Path(out)
    methods = shared_methods(results)
    scores = {name: r["scores"] for name, r in results.items()}
    paths = {"json": out / "compare.json", "md": out / "compare.md", "png": out / "compare.png"}
    write_text(paths["json"], json.dumps({**info, "methods": methods, "results": results}, indent=1))
    write_text(paths["md"], "\n\n".join([markdown_table(scores, methods), summary_table(scores, methods),
                                         seconds_table(results)]) + "\n")
    comparison_chart(scores, methods, labels(), paths["png"])
    return paths
