"""`TaskVectorExtractor`: the common pipeline (means -> fit -> evaluate -> save) as one object.

The name follows the PyTorch task-vectors package; every method is a thin wrapper over
the functional API (`extract_means`, `fit`, `evaluate`, `save_task_vector`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter

from tvjax.version import __version__
from tvjax.checkpoint import has_checkpoints
from tvjax.convert import DEFAULT_MODEL, CheckpointError, Model, load
from tvjax.data import Task, Template, load_task, prompts_for
from tvjax.evaluation import Scores, evaluate_many
from tvjax.extract import extract_means_many
from tvjax.fields import COUNT, check_value
from tvjax.fitting import FitConfig, FitResult, fit_many
from tvjax.interventions import HeadBlend
from tvjax.methods import BASELINES
from tvjax.report import timed
from tvjax.taskvector import load_task_vector, save_intervention


class TaskVectorExtractor:
    """Fit and use a soft task vector for one model and one task.

    Example:
        tv = TaskVectorExtractor(task="antonym")     # default model
        tv.extract_means(); tv.fit()
        print(tv.evaluate())                          # zero-shot, ICL, task vector
        tv.save("antonym.safetensors")

    Its phases are those of `fit_together` with one task: the same functions serve one task or many.
    """

    def __init__(self, model: Model | str | None = None, task: Task | str = "antonym", *, shots: int = 10,
                 n_prompts: int = 50, fit_config: FitConfig = FitConfig(), template: Template = Template(),
                 seed: int = 0, model_name: str | None = None, progress=None):
        """`model_name` names a `Model` passed in (in saved files); by default its name or 'custom'.
        `progress`: a tqdm bar advanced once per phase (means, fit, each method's evaluation).
        The task and the numbers are checked before a model is loaded."""
        check_value("shots", shots, COUNT)
        check_value("n_prompts", n_prompts, COUNT)
        self.task = task if isinstance(task, Task) else load_task(task, seed)
        self.task.require(shots)
        self.model = model if isinstance(model, Model) else load(model)
        if self.model.tokenizer is None:
            raise CheckpointError("this checkpoint has no tokenizer; copy its tokenizer files (tokenizer.json, "
                                  "tokenizer_config.json) into the checkpoint directory")
        self.model_name = model_name or ("custom" if isinstance(model, Model) else str(model or DEFAULT_MODEL))
        self.shots, self.n_prompts, self.fit_config = shots, n_prompts, fit_config
        self.template, self.seed = template, seed
        self.mu = None
        self.result: FitResult | None = None
        self.blend: HeadBlend | None = None  # where it acts and its form are its own fields
        self.timings: dict[str, float] = {}
        self.progress = progress

    @property
    def positions(self) -> str:
        """Where the vector acts: its blend's (a loaded file's own), else the fit's setting."""
        return self.fit_config.positions if self.blend is None else self.blend.positions

    def extract_means(self):
        """Head means `[L, N, H]` from ICL prompts of the train split."""
        with self._phase("means"):
            _extract_means([self])
        return self.mu

    def fit(self, checkpoint_dir=None, resume: bool = False) -> HeadBlend:
        """Fit `theta` (extracting the means first if needed); keeps the best-validation blend.

        With `checkpoint_dir` the fit is checkpointed with Orbax; `resume` continues the
        latest checkpoint there (whose means are reused), or starts afresh if there is none.
        """
        if self.mu is None and not (resume and has_checkpoints(checkpoint_dir)):
            self.extract_means()
        with self._phase("fit"):
            _fit([self], checkpoint_dir, resume)
        return self.blend

    def run_info(self) -> dict:
        """What a resumed fit must share with the checkpointed one, beyond the fit's own settings."""
        return {"model_name": self.model_name, "shots": self.shots, "n_prompts": self.n_prompts, "seed": self.seed}

    def evaluate(self, methods=None, split: str = "test", first_token_only: bool = False) -> dict[str, Scores]:
        """Scores of each method on `split`: plain zero-shot, `shots`-shot ICL, zero-shot + task vector
        (`first_token_only`: one forward per batch, the first token scored alone; see `evaluate`)."""
        methods = SCORED if methods is None else methods
        scores = {}
        for method in methods:
            with self._phase(f"eval_{method}"):
                scores[method] = _evaluate([self], method, split, first_token_only)[0]
        return scores

    def _phase(self, name: str):
        """Time phase `name` into `timings`, shown on the progress bar as '<task> <phase>'."""
        return timed(self.timings, name, self.progress, label=f"{self.task.name} {name}")

    def save(self, path, **extra):
        """Write the task vector file (arrays, where it acts, metadata: model, task, hyperparameters, version)."""
        if self.blend is None:
            raise ValueError("no task vector yet: call fit() or load() first")
        info = {"model": self.model_name, "task": self.task.name, "shots": self.shots, "n_prompts": self.n_prompts,
                "fit": dataclasses.asdict(self.fit_config), "template": self.template.text, "seed": self.seed,
                "lead": self.lead(), "tvjax_version": __version__, **extra}
        if self.result is not None:
            info.update(best_step=self.result.best_step, best_valid_loss=self.result.best_valid_loss)
        return save_intervention(path, self.blend, self.model.config, **info)

    def lead(self) -> str:
        """Whitespace that ends this task's fitting prompts (e.g. ' ' before digits in SmolLM2)."""
        prompts, _ = prompts_for(self.model.tokenizer, self.task, "train", 0, template=self.template, seed=self.seed)
        return Counter(p.lead for p in prompts).most_common(1)[0][0]

    def load(self, path) -> HeadBlend:
        """Load a task vector file, checked against this model's shape."""
        tv = load_task_vector(path)
        tv.check(self.model.config, self.model_name)
        self.blend = tv.intervention()
        self.mu = tv.mu
        return self.blend


SCORED = BASELINES + ("task_vector",)  # what `TaskVectorExtractor.evaluate` scores by default


def _extract_means(extractors: list[TaskVectorExtractor]) -> None:
    """Each extractor's head means, from shared batches (the extractors share model and settings)."""
    first = extractors[0]
    mus = extract_means_many(first.model, [tv.task for tv in extractors], n_prompts=first.n_prompts,
                             shots=first.shots, seed=first.seed, template=first.template)
    for tv, mu in zip(extractors, mus):
        tv.mu = mu


def _fit(extractors: list[TaskVectorExtractor], checkpoint_dir, resume: bool) -> None:
    """Each extractor's vector from one `fit_many` loop (its means may be None when resuming)."""
    first = extractors[0]
    mus = None if any(tv.mu is None for tv in extractors) else [tv.mu for tv in extractors]
    results = fit_many(first.model, [tv.task for tv in extractors], mus, first.fit_config, template=first.template,
                       checkpoint_dir=checkpoint_dir, resume=resume, run_info=first.run_info())
    for tv, result in zip(extractors, results):
        tv.mu, tv.result, tv.blend = result.blend.mu, result, result.blend


def _evaluate(extractors: list[TaskVectorExtractor], method: str, split: str = "test",
              first_token_only: bool = False) -> list[Scores]:
    """`method`'s scores of each extractor's task, in shared batches (16 rows per task, at most 64)."""
    first = extractors[0]
    if method == "task_vector" and any(tv.blend is None for tv in extractors):
        raise ValueError("no task vector yet: call fit() or load() first")
    interventions = [tv.blend for tv in extractors] if method == "task_vector" else None
    return evaluate_many(first.model, [tv.task for tv in extractors], interventions=interventions,
                         shots=first.shots if method == "icl" else 0, split=split, seed=first.seed,
                         template=first.template, batch_size=16 * min(len(extractors), 4),
                         desc=f"{method} {first.task.name if len(extractors) == 1 else f'{len(extractors)} tasks'}",
                         first_token_only=first_token_only)


def fit_tasks(model: Model, tasks, *, methods=SCORED, **settings):
    """For each task (name, path or Task) in turn: means, fit, evaluate. Yields `(extractor, scores)`.

    `settings` go to `TaskVectorExtractor` (`progress`: a bar over `2 + len(methods)` phases per task).
    """
    for task in tasks:
        tv = TaskVectorExtractor(model, task, **settings)
        tv.extract_means()
        tv.fit()
        yield tv, tv.evaluate(methods)


def fit_together(model: Model, tasks, *, methods=SCORED, checkpoint_dir=None, resume: bool = False,
                 **settings) -> list[tuple[TaskVectorExtractor, dict]]:
    """`fit_tasks` for many tasks in shared passes over the weights: the means of all tasks in the
    same batches, one fitting loop (`fit_many`, checkpointed and resumed as
    `TaskVectorExtractor.fit` does) and shared evaluation batches (`evaluate_many`). Each
    task's vector equals fitting it alone up to float rounding.

    Returns `(extractor, scores)` per task; each extractor's `timings` are the shared phases'.
    """
    extractors = [TaskVectorExtractor(model, task, **settings) for task in tasks]
    timings: dict[str, float] = {}
    if not (resume and has_checkpoints(checkpoint_dir)):
        with timed(timings, "means"):
            _extract_means(extractors)
    with timed(timings, "fit"):
        _fit(extractors, checkpoint_dir, resume)
    scores = [{} for _ in extractors]
    for method in methods:
        with timed(timings, f"eval_{method}"):
            for per_task, score in zip(scores, _evaluate(extractors, method)):
                per_task[method] = score
    for tv in extractors:
        tv.timings.update(timings)
    return list(zip(extractors, scores))
