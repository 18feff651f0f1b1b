"""Experiments over the package: named fitting recipes and their sweep, the oracle ceiling of
last-token edits, and a large word task built from a tokenizer's vocabulary.

What `scripts/sweep_fit.py`, `scripts/oracle_ceiling.py` and `scripts/benchmark.py` run; no
other tvjax module imports it. A recipe is a dict of overrides: of `FitConfig` fields, of the
means' settings (`MEANS`) and of the data the fit sees (`DATA`).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from tvjax.data import Task, TaskError, prompts_for
from tvjax.evaluation import Scores, answer_budget, evaluate_many
from tvjax.extract import extract_means_many, site_means
from tvjax.files import write_text
from tvjax.fitting import FitConfig, fit_many
from tvjax.interventions import HeadBlend

# The 11 built-in tasks where 10-shot ICL reaches 30% on the default model (docs/task_table.md).
SUITE = ("antonym", "capitalize", "comparative", "country_capital", "first_letter", "lowercase", "next_number",
         "number_to_word", "present_past", "singular_plural", "uppercase")
# Named recipes ("default": FitConfig's own). "before" is the default before the present one (the
# last prompt token, blend form, 800 steps); the others are variations of it, pinned so that they
# stay what they were measured as. batch16 is the fixed workload of the benchmarks (docs/benchmarks.md).
BEFORE = {"positions": "last", "form": "blend", "steps": 800, "eval_every": 80, "patience": 0}
RECIPES = {
    "default": {},
    "before": BEFORE,
    "answer": {**BEFORE, "positions": "answer"},
    "split": {**BEFORE, "positions": "split", "answer_steps": 800},
    "shift": {**BEFORE, "form": "shift"},
    "shift_split": {**BEFORE, "positions": "split", "form": "shift", "answer_steps": 800},
    "published": {**BEFORE, "learning_rate": 0.2, "batch_size": 1, "steps": 400, "eval_every": 40},  # weights 0.5
    "batch4": {**BEFORE, "batch_size": 4, "steps": 100, "eval_every": 50},
    "batch16": {**BEFORE, "batch_size": 16, "learning_rate": 0.3, "eval_every": 10, "steps": 100},
}
SWEEP = ("default", "before", "split", "shift", "shift_split", "published")  # a sweep's recipes unless named
MEANS = {"n_prompts": 50, "shots": 10}  # extract_means' defaults
DATA = {"train_fraction": 1.0, "fit_on_scored": False}  # what the fit trains and chooses on
ORACLE = "oracle (ICL heads at the last token)"  # the oracle's column in `oracle_ceiling`'s rows


def parse_recipe(words: Sequence[str]) -> tuple[str, dict]:
    """`(name, overrides)` of `NAME [FIELD=VALUE ...]`, values parsed as JSON where they can be.

    A name alone is one of `RECIPES`; a name with pairs is a new recipe. Raises ValueError for
    an unknown name or field.
    """
    name, *pairs = words
    if not pairs:
        if name not in RECIPES:
            raise ValueError(f"unknown recipe {name!r}: give its overrides (FIELD=VALUE) or one of "
                             f"{', '.join(RECIPES)}")
        return name, RECIPES[name]
    fields = {f.name for f in dataclasses.fields(FitConfig)} | set(MEANS) | set(DATA)
    overrides = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in fields:
            raise ValueError(f"recipe {name}: {key!r} is not a FitConfig field, a mean setting or a data setting "
                             f"({', '.join(sorted(fields))})")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return name, overrides


def fit_data(task: Task, split: str, train_fraction: float, fit_on_scored: bool) -> Task:
    """`task` as the fit sees it: the first `train_fraction` of its train pairs, or (`fit_on_scored`)
    its `split` as both train and valid: the fit's ceiling on the very items it is scored on."""
    if fit_on_scored:
        scored = task.split(split)
        return dataclasses.replace(task, train=scored, valid=scored)
    if not 0 < train_fraction <= 1:
        raise ValueError(f"train_fraction must be in (0, 1], not {train_fraction}")
    return dataclasses.replace(task, train=task.train[:max(1, round(train_fraction * len(task.train)))])


class Means:
    """Head means of a fixed list of `A` tasks, from their whole train splits, each setting
    extracted once (in shared batches) however many recipes ask for it."""

    def __init__(self, model, tasks: Sequence[Task]):
        self.model, self.tasks, self.extracted = model, list(tasks), {}

    def __call__(self, n_prompts: int, shots: int, seed: int = 0) -> np.ndarray:
        """`[A, L, N, H]`: the means over `n_prompts` `shots`-shot prompts per task (0 shots: the
        shift form's bases)."""
        key = (n_prompts, shots, seed)
        if key not in self.extracted:
            self.extracted[key] = extract_means_many(self.model, self.tasks, n_prompts=n_prompts, shots=shots,
                                                     seed=seed)
        return self.extracted[key]


def run_recipe(model, tasks: Sequence[Task], overrides: dict, split: str, means: Means) -> dict:
    """One recipe on every task: one `fit_many` loop (timed) and its scores on `split`.

    The means come from `means` (the shift form's bases too: zero-shot means with the fit's seed),
    the fit's data from `fit_data`. Returns the sweep's JSON entry: `{"overrides": overrides,
    "fit_seconds": float, "best_step": {task: int}, "scores": {task: Scores.as_dict()}}`.
    """
    settings = FitConfig(**{k: v for k, v in overrides.items() if k not in MEANS and k not in DATA})
    fitted_on = [fit_data(task, split, **{k: overrides.get(k, v) for k, v in DATA.items()}) for task in tasks]
    mu = means(**{k: overrides.get(k, v) for k, v in MEANS.items()})
    bases = means(MEANS["n_prompts"], 0, settings.seed) if settings.form == "shift" else None
    start = time.perf_counter()
    results = fit_many(model, fitted_on, mu, settings, bases=bases)
    seconds = time.perf_counter() - start
    scores = _evaluate(model, tasks, split, interventions=[r.blend for r in results])
    return {"overrides": overrides, "fit_seconds": seconds,
            "best_step": {t.name: r.best_step for t, r in zip(tasks, results)},
            "scores": {t.name: s.as_dict() for t, s in zip(tasks, scores)}}


def sweep(model, tasks: Sequence[Task], recipes: dict[str, dict], out: Path, split: str = "valid") -> dict:
    """Recipes over a task suite, scored on `split` next to zero-shot and `MEANS["shots"]`-shot ICL.

    Results go to the JSON file `out` as they come: `{"scored_on": split, "zero_shot": {"scores":
    ...}, "icl": ..., name: run_recipe's entry, ...}`; a rerun keeps what `out` already holds for
    these tasks (a recipe with the same overrides is not fitted again). Recipes are chosen on
    valid; `split="test"` reports the chosen ones, in a file of its own (ValueError otherwise).
    Prints each recipe's mean exact match as it is done. Returns the whole JSON dict.
    """
    names = [t.name for t in tasks]
    done = json.loads(out.read_text()) if out.is_file() else {}
    if done.setdefault("scored_on", split) != split:
        raise ValueError(f"{out} holds scores on the {done['scored_on']} split; write the {split} split elsewhere")
    for baseline, shots in (("zero_shot", 0), ("icl", MEANS["shots"])):
        if not set(done.get(baseline, {}).get("scores", {})) >= set(names):
            scores = _evaluate(model, tasks, split, shots=shots)
            done[baseline] = {"scores": {n: s.as_dict() for n, s in zip(names, scores)}}
            _write(out, done)
    means = Means(model, tasks)
    for name, overrides in recipes.items():
        if done.get(name, {}).get("overrides") == overrides and set(done[name]["scores"]) >= set(names):
            continue
        done[name] = run_recipe(model, tasks, overrides, split, means)
        _write(out, done)
        print(f"{name}: fitted in {done[name]['fit_seconds']:.0f} s; {split} exact match "
              f"{_mean(done[name], names, 'exact_match'):.1f}%", flush=True)
    return done


def sweep_table(done: dict, names: Sequence[str]) -> str:
    """Markdown of a `sweep`'s results on the tasks `names`: one row per entry that scored them all
    (baselines first), the mean first token / exact / contains, the exact match per task, fit seconds."""
    lines = ["| recipe | overrides | first token / exact / contains | " + " | ".join(names) + " | fit s |",
             "|---" * (len(names) + 4) + "|"]
    for name, entry in done.items():
        if not isinstance(entry, dict) or not set(entry["scores"]) >= set(names):
            continue
        means = " / ".join(f"{_mean(entry, names, m):.1f}" for m in ("first_token", "exact_match", "contains"))
        exact = " | ".join(f"{100 * entry['scores'][n]['exact_match']:.0f}" for n in names)
        overrides = " ".join(f"{k}={v}" for k, v in entry.get("overrides", {}).items()) or "-"
        seconds = f"{entry['fit_seconds']:.0f}" if "fit_seconds" in entry else "-"
        lines.append(f"| {name} | {overrides} | {means} | {exact} | {seconds} |")
    return "\n".join(lines)


def _write(path: Path, done: dict) -> None:
    write_text(path, json.dumps(done, indent=1))


def _mean(entry: dict, names: Sequence[str], metric: str) -> float:
    """Percent: `metric` averaged over the tasks `names` of a sweep entry."""
    return 100 * float(np.mean([entry["scores"][n][metric] for n in names]))


def oracle_scores(model, task: Task, split: str, shots: int) -> Scores:
    """The oracle on `task`'s `split`: each zero-shot prompt generated with every head at its last
    token replaced (theta = +inf) by that head's output at the last token of the `shots`-shot
    ICL prompt with the same query.

    No task mean can carry more of a prompt's ICL computation through the heads at the last
    token. Scored as `evaluate` scores the split (one generation budget for all its prompts),
    each prompt as a task of its own with its own means; `skipped` counts the pairs either
    prompt set cannot tokenise.
    """
    zero, _ = prompts_for(model.tokenizer, task, split, 0)
    icl, _ = prompts_for(model.tokenizer, task, split, shots)
    by_pair = {p.pair: p for p in icl}
    zero = [p for p in zero if p.pair in by_pair]  # the queries both prompt sets could tokenise
    heads = site_means(model, [by_pair[p.pair] for p in zero], ("heads",), groups=np.arange(len(zero)),
                       desc=f"oracle heads {task.name}")["heads"]  # [P, L, N, H]: each ICL prompt's own
    theta = np.full(heads.shape[1:3], np.inf, np.float32)  # [L, N]: every head replaced
    alone = [dataclasses.replace(task, **{split: (p.pair,)}) for p in zero]  # one task per prompt
    scores = _evaluate(model, alone, split, interventions=[HeadBlend(theta, h) for h in heads],
                       max_new_tokens=answer_budget(zero))
    rates = np.mean([[s.first_token, s.exact_match, s.contains] for s in scores], axis=0)
    return Scores(*rates.tolist(), len(zero), len(task.split(split)) - len(zero))


def oracle_ceiling(model, tasks: Sequence[Task], split: str = "valid", shots: int = 10) -> dict[str, dict]:
    """Zero-shot, `shots`-shot ICL and `oracle_scores` of each task on `split`, as
    `tvjax.report.markdown_table` takes them: `{task: {"zero_shot" | "icl" | ORACLE: Scores.as_dict()}}`.
    Prints each task's oracle first token / exact match as it is done."""
    zero, icl = (_evaluate(model, tasks, split, shots=k) for k in (0, shots))
    rows = {}
    for task, z, i in zip(tasks, zero, icl):
        oracle = oracle_scores(model, task, split, shots)
        rows[task.name] = {"zero_shot": z.as_dict(), "icl": i.as_dict(), ORACLE: oracle.as_dict()}
        print(f"{task.name}: oracle {oracle.first_token:.2f} / {oracle.exact_match:.2f}", flush=True)
    return rows


def _evaluate(model, tasks: Sequence[Task], split: str, **settings) -> list[Scores]:
    """Every task's `Scores` on `split` in shared batches: this module's one call of the package's
    evaluation (`settings`: `shots`, `interventions` (one `HeadBlend` per task), `max_new_tokens`)."""
    return evaluate_many(model, tasks, split=split, **settings)


def vocabulary_task(tokenizer, sizes: tuple[int, int, int] = (1500, 200, 500), seed: int = 0) -> Task:
    """A large word task from `tokenizer`'s own vocabulary: a word -> its first letter.

    Words are the vocabulary's single-token lowercase words of 3-10 letters after a space
    ('Ġhouse'); `sizes` train / valid / test pairs, drawn with `seed` (TaskError when the
    vocabulary has fewer such words).
    """
    words = sorted({t[1:] for t in tokenizer.get_vocab() if re.fullmatch(r"Ġ[a-z]{3,10}", t)})
    n = sum(sizes)
    if len(words) < n:
        raise TaskError(f"the vocabulary has {len(words)} such words; {n} are needed")
    picked = np.random.default_rng(seed).choice(words, n, replace=False).tolist()
    return Task.from_pairs("vocabulary_first_letter", [(w, w[0]) for w in picked], seed=seed,
                           fractions=tuple(k / n for k in sizes))
