"""`TaskVectorExtractor`: the common pipeline (means -> fit -> evaluate -> save) as one object.

The name follows the PyTorch task-vectors package; every method is a thin wrapper over
the functional API (`extract_means`, `fit`, `evaluate`, `save_task_vector`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter

from tvjax import __version__
from tvjax.checkpoint import has_checkpoints
from tvjax.convert import DEFAULT_MODEL, CheckpointError, Model, load
from tvjax.data import Task, Template, load_task, prompts_for
from tvjax.evaluation import Scores, evaluate, evaluate_many
from tvjax.extract import extract_means, extract_means_many
from tvjax.fitting import FitConfig, FitResult, fit, fit_many
from tvjax.interventions import HeadBlend
from tvjax.report import BASELINES, timed
from tvjax.taskvector import load_task_vector, save_intervention


class TaskVectorExtractor:
    """Fit and use a soft task vector for one model and one task.

    Example:
        tv = TaskVectorExtractor(task="antonym")     # default model
        tv.extract_means(); tv.fit()
        print(tv.evaluate())                          # zero-shot, ICL, task vector
        tv.save("antonym.safetensors")
    """

    def __init__(self, model: Model | str | None = None, task: Task | str = "antonym", *, shots: int = 10,
                 n_prompts: int = 50, fit_config: FitConfig = FitConfig(), template: Template = Template(),
                 seed: int = 0, model_name: str | None = None, progress=None):
        """`model_name` names a `Model` passed in (in saved files); by default its name or 'custom'.
        `progress`: a tqdm bar advanced once per phase (means, fit, each method's evaluation)."""
        self.model = model if isinstance(model, Model) else load(model)
        if self.model.tokenizer is None:
            raise CheckpointError("this checkpoint has no tokenizer; copy its tokenizer files (tokenizer.json, "
                                  "tokenizer_config.json) into the checkpoint directory")
        self.model_name = model_name or ("custom" if isinstance(model, Model) else str(model or DEFAULT_MODEL))
        self.task = task if isinstance(task, Task) else load_task(task, seed)
        self.task.require(shots)
        self.shots, self.n_prompts, self.fit_config = shots, n_prompts, fit_config
        self.template, self.seed = template, seed
        self.mu = None
        self.positions = fit_config.positions  # where the vector acts (a loaded file's own)
        self.result: FitResult | None = None
        self.blend: HeadBlend | None = None
        self.timings: dict[str, float] = {}
        self.progress = progress

    def extract_means(self):
        """Head means `[L, N, H]` from ICL prompts of the train split."""
        with self._phase("means"):
            self.mu = extract_means(self.model, self.task, n_prompts=self.n_prompts, shots=self.shots,
                                    seed=self.seed, template=self.template)
        return self.mu

    def fit(self, checkpoint_dir=None, resume: bool = False) -> HeadBlend:
        """Fit `theta` (extracting the means first if needed); keeps the best-validation blend.

        With `checkpoint_dir` the fit is checkpointed with Orbax; `resume` continues the
        latest checkpoint there (whose means are reused), or starts afresh if there is none.
        """
        if self.mu is None and not (resume and has_checkpoints(checkpoint_dir)):
            self.extract_means()
        with self._phase("fit"):
            self.result = fit(self.model, self.task, self.mu, self.fit_config, template=self.template,
                              checkpoint_dir=checkpoint_dir, resume=resume, run_info=self.run_info())
        self.mu = self.result.blend.mu
        self.blend = self.result.blend
        return self.blend

    def run_info(self) -> dict:
        """What a resumed fit must share with the checkpointed one, beyond the fit's own settings."""
        return {"model_name": self.model_name, "shots": self.shots, "n_prompts": self.n_prompts, "seed": self.seed}

    def evaluate(self, methods=None, split: str = "test", first_token_only: bool = False) -> dict[str, Scores]:
        """Scores of each method on `split`: plain zero-shot, `shots`-shot ICL, zero-shot + task vector
        (`first_token_only`: one forward per batch, the first token scored alone; see `evaluate`)."""
        methods = METHODS if methods is None else methods
        settings = {"zero_shot": {}, "icl": {"shots": self.shots},
                    "task_vector": {"intervention": self.blend, "positions": self.positions}}
        if "task_vector" in methods and self.blend is None:
            raise ValueError("no task vector yet: call fit() or load() first")
        scores = {}
        for method in methods:
            with self._phase(f"eval_{method}"):
                scores[method] = evaluate(self.model, self.task, split=split, seed=self.seed,
                                          template=self.template, desc=f"{method} {self.task.name}",
                                          first_token_only=first_token_only, **settings[method])
        return scores

    def _phase(self, name: str):
        """Time phase `name` into `timings`, shown on the progress bar as '<task> <phase>'."""
        return timed(self.timings, name, self.progress, label=f"{self.task.name} {name}")

    def save(self, path, **extra):
        """Write the task vector file (arrays + metadata: model, task, hyperparameters, version)."""
        if self.blend is None:
            raise ValueError("no task vector yet: call fit() or load() first")
        info = {"model": self.model_name, "task": self.task.name, "shots": self.shots, "n_prompts": self.n_prompts,
                "fit": dataclasses.asdict(self.fit_config), "template": self.template.text, "seed": self.seed,
                "lead": self.lead(), "positions": self.positions, "tvjax_version": __version__, **extra}
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
        tv.check(self.model.config)
        self.blend = tv.intervention()
        self.mu, self.positions = tv.mu, tv.positions
        return self.blend


METHODS = BASELINES + ("task_vector",)  # what `TaskVectorExtractor.evaluate` scores by default


def fit_tasks(model: Model, tasks, *, methods=METHODS, **settings):
    """For each task (name, path or Task): means, fit, evaluate. Yields `(extractor, scores)`.

    `settings` go to `TaskVectorExtractor` (`progress`: a bar over `2 + len(methods)` phases per task).
    """
    for task in tasks:
        tv = TaskVectorExtractor(model, task, **settings)
        tv.extract_means()
        tv.fit()
        yield tv, tv.evaluate(methods)


def fit_together(model: Model, tasks, *, methods=METHODS, checkpoint_dir=None, resume: bool = False,
                 **settings) -> list[tuple[TaskVectorExtractor, dict]]:
    """`fit_tasks` for many tasks in shared passes over the weights: the means of all tasks in the
    same batches (`extract_means_many`), one fitting loop (`fit_many`, checkpointed and resumed
    as `TaskVectorExtractor.fit` does) and shared evaluation batches (`evaluate_many`). Each
    task's vector equals fitting it alone up to float rounding.

    Returns `(extractor, scores)` per task; each extractor's `timings` are the shared phases'.
    """
    extractors = [TaskVectorExtractor(model, task, **settings) for task in tasks]
    first = extractors[0]
    tasks = [tv.task for tv in extractors]
    timings: dict[str, float] = {}
    mus = None
    if not (resume and has_checkpoints(checkpoint_dir)):
        with timed(timings, "means"):
            mus = extract_means_many(first.model, tasks, n_prompts=first.n_prompts, shots=first.shots,
                                     seed=first.seed, template=first.template)
    with timed(timings, "fit"):
        results = fit_many(first.model, tasks, mus, first.fit_config, template=first.template,
                           checkpoint_dir=checkpoint_dir, resume=resume, run_info=first.run_info())
    for tv, result in zip(extractors, results):
        tv.mu, tv.result, tv.blend = result.blend.mu, result, result.blend
    settings = {"zero_shot": {}, "icl": {"shots": first.shots},
                "task_vector": {"blends": [r.blend for r in results], "positions": first.positions}}
    scores = [{} for _ in tasks]
    for method in methods:
        with timed(timings, f"eval_{method}"):
            for per_task, score in zip(scores, evaluate_many(first.model, tasks, seed=first.seed,
                                                             template=first.template, **settings[method])):
                per_task[method] = score
    for tv in extractors:
        tv.timings.update(timings)
    return list(zip(extractors, scores))
