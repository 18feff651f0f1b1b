"""Fit soft task vectors: learn `theta [L, N]` per task with Optax, model params and means fixed.

A client of the engine: prompt rows with cached prefixes (`tvjax.rows`), the means
(`tvjax.extract`) and the shared training step and loop (`tvjax.train`). A step runs only
each row's suffix on top of its cached prefix, so the loop is cheap and compiles once.

One path for one task or many: `fit_many` fits `A` tasks in one loop (each row blended with
its own task's vector, `HeadBlend.rows`), and `fit` is `fit_many` with one task. The blend
is the state: where it acts and how a head moves are its fields, set from `FitConfig`.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tvjax.config import ModelConfig
from tvjax.data import Task, Template, prompts_for
from tvjax.extract import extract_means_many
from tvjax.fields import COUNT, FINITE, NON_NEGATIVE, PENALTY, RATE, SEED, check_fields, option, optional
from tvjax.interventions import HeadBlend
from tvjax.model import param_axes
from tvjax.rows import Blocks, Rows, batch, prepare_rows, row_losses, scores, take
from tvjax.sharding import placed, put
from tvjax.train import (OPTIMIZER, batch_indices, drawn_rows, initial_means, loop, open_checkpoints, optimizer,
                         train_step)
from tvjax.vocabulary import Form, Positions, check_form, check_positions


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Hyperparameters of `fit`. The defaults: the shift form, fitted in two stages ('split'):
    400 steps of the published recipe (Adam, learning rate 0.2, batch 1, weights starting at 1:
    the whole ICL minus zero-shot difference) at the last prompt token, then 100 at the answer
    tokens; chosen by valid accuracy over the built-in suite with scripts/sweep_fit.py on the
    default model (docs/method.md has the sweep)."""

    steps: int = option(400, "training steps (with --positions split: of the first stage)", COUNT)
    learning_rate: float = option(0.2, "the optimizer's learning rate", RATE)
    batch_size: int = option(1, "train rows per step (of each task)", COUNT)
    init: float = option(0.0, "initial theta: weight sigmoid(0) = 0.5 on the means (blend), 2 sigmoid(0) = 1 "
                              "(shift)", FINITE)
    seed: int = option(0, "the splits' shuffle and the order of the train rows", SEED)
    eval_every: int = option(40, "validate (and keep the best vector, and checkpoint) every this many steps", COUNT)
    patience: int = option(0, "stop once every task's best validation is this many validations old (0: run every "
                              "step)", NON_NEGATIVE)
    answer_steps: int | None = option(None, "with positions split: the answer stage's steps (default: a quarter of steps)",
                                      optional(COUNT, "a quarter of steps"))
    sparsity: float = option(0.0, "penalty weight on the mean head weight mean(sigmoid(theta))", PENALTY)
    optimizer: str = option("adam", "any optax optimizer taking a learning rate: adam, adamw, sgd, lion, ...",
                            OPTIMIZER)
    all_answer_tokens: bool = option(False, "the loss on every answer token instead of the first (positions last)")
    positions: Positions = option("split", "where the vector acts: 'last' (the last prompt token), 'answer' (also "
                                           "every answer token, generated or teacher-forced; the loss covers the "
                                           "whole answer) or 'split' (theta fitted as 'last' fits it, then frozen "
                                           "while weights of its own at the answer tokens, theta_answer, are fitted "
                                           "answer_steps more on the answer after its first token and the stop)")
    form: Form = option("shift", "how a head moves: 'blend' o + sigmoid(theta) (mu - o), toward its ICL mean, or "
                                 "'shift' o + 2 sigmoid(theta) (mu - base), by its ICL minus zero-shot mean (keeping "
                                 "what it carries about the query)")

    def __post_init__(self):
        check_positions(self.positions)
        check_form(self.form)
        check_fields(self)

    @property
    def answer_stage(self) -> "FitConfig":
        """The settings of the answer stage of positions 'split': `answer_steps` steps."""
        return dataclasses.replace(self, steps=self.answer_steps or max(1, self.steps // 4))


# Where positions 'split' starts theta_answer: weight sigmoid(-6) = 0.25% on the means, so the
# answer stage starts from the first stage's generation, and its best validation is never worse.
ANSWER_INIT = -6.0


class FitResult(NamedTuple):
    blend: HeadBlend  # theta with the best validation loss
    best_step: int
    best_valid_loss: float
    history: list  # dicts: step, train_loss (mean since the last eval), valid_loss, valid_first_token (accuracy)


def blend_loss(theta, params, blend: HeadBlend, rows: Rows, index, task, sparsity, *, config: ModelConfig):
    """The soft task vector's loss, for `tvjax.train.train_step`.

    Args:
      theta: `[A, L, N]` the logits fitted (`HeadBlend.fitted`) of `A` tasks.
      blend: their blends, stacked (`[A, ...]`), whose fitted logits `theta` replaces.
      rows: the prepared train rows; `index` `[A * B]` the step's rows (`tvjax.rows.batch`), row `i`
        of task `task[i]`.
      sparsity: penalty weight on each task's mean head weight.
    Returns:
      `(sum over tasks, [A] each task's loss)`: its rows' mean answer cross-entropy plus its penalty.
      Each task's loss depends on its own theta only, so the gradient of the sum is each task's
      own gradient, and an elementwise optimizer (adam, sgd, lion, ...) steps each task as it
      would step it alone.
    """
    per_row = row_losses(params, config, blend.fitting(theta).rows(task), take(rows, index))  # [A * B]
    per_task = per_row.reshape(theta.shape[0], -1).mean(1) + sparsity * jax.nn.sigmoid(theta).mean((1, 2))
    return per_task.sum(), per_task


def fit_step(settings: FitConfig):
    """The jitted step of `blend_loss` for `settings`' optimizer (see `tvjax.train.train_step`)."""
    return train_step(blend_loss, settings.optimizer, settings.learning_rate)


def lower_train_step(mesh, theta, opt_state, params, blend: HeadBlend, rows: Rows, index, task, sparsity, *,
                     config: ModelConfig, settings: FitConfig = FitConfig()):
    """The fitting step on `mesh`, lowered for these arrays or `jax.ShapeDtypeStruct`s (memory planning)."""
    with jax.set_mesh(mesh):
        params = put(params, param_axes(config))
        return fit_step(settings).lower(params, put(theta, None), put(opt_state, None), put(blend, blend.axes()),
                                        put(rows, rows.axes()), *put((index, task, sparsity), None), config=config)


def fit(model, task: Task, mu, settings: FitConfig = FitConfig(), *, template: Template = Template(),
        checkpoint_dir=None, resume: bool = False, run_info: dict | None = None, base=None) -> FitResult:
    """`fit_many` of one task: `mu` `[L, N, H]` its head means (None when resuming), `base` its
    zero-shot means for the shift form (None: extracted); the other arguments as there."""
    return fit_many(model, [task], None if mu is None else [mu], settings, template=template,
                    checkpoint_dir=checkpoint_dir, resume=resume, run_info=run_info,
                    bases=None if base is None else [base])[0]


def fit_many(model, tasks: Sequence[Task], mus, settings: FitConfig = FitConfig(), *,
             template: Template = Template(), checkpoint_dir=None, resume: bool = False,
             run_info: dict | None = None, bases=None) -> list[FitResult]:
    """Fit one `theta` per task on zero-shot train prompts in one loop; keep each task's best validation.

    Every step's batch holds `settings.batch_size` train rows of each task (each task's own
    seeded order), each row blended with its task's vector (`HeadBlend.rows`); each task has
    its own optimizer state, validation loss and best step. Fitting tasks together equals
    fitting each alone with the same seed up to float rounding (prompts are padded to the
    longest of all tasks).

    With positions 'split' the fit has two stages: `theta` as positions 'last' fits it, then
    `theta_answer` with `theta` frozen, so the first answer token keeps the first stage's
    accuracy and the second learns the rest of the answer and its end. Its history holds both
    stages (each entry's `stage`: 'last' or 'answer'), its best step is the answer stage's.

    Args:
      tasks: `A` tasks.  mus: their head means, `A` arrays `[L, N, H]` (or one `[A, L, N, H]`;
        may be None when resuming: the checkpoint's are used).
      settings: the `FitConfig`.
      checkpoint_dir: save an Orbax checkpoint at every validation (one holds every task's
        state; see `tvjax.checkpoint`); with positions 'split', each stage in its own subfolder
        ('last', 'answer').
      resume: continue from the latest checkpoint in `checkpoint_dir` (if there is one).
        The data order is a function of (seed, step), so the resumed run is the same run.
      run_info: extra JSON-able run description (e.g. the model id) that must match on resume.
      bases: with form 'shift', their zero-shot head means (as `mus`); None: the means of their
        zero-shot train prompts (none when `mus` is None: a resumed run takes its checkpoint's).
    Returns:
      One `FitResult` per task, in order.
    """
    config = model.config
    shape = (len(tasks), config.n_layers, config.n_heads, config.head_dim)
    if settings.form == "shift" and bases is None and mus is not None:
        bases = extract_means_many(model, tasks, shots=0, template=template, seed=settings.seed)
    mu, base = (None if xs is None else _stacked(xs, shape, name) for xs, name in ((mus, "mean"), (bases, "base")))
    stage = functools.partial(_fit_stage, model, tasks, template=template, resume=resume, run_info=run_info)
    start = HeadBlend(None, mu, None, base, settings.positions)
    if settings.positions != "split":
        return stage(start, settings, _data(model, tasks, settings, template, start), checkpoint_dir=checkpoint_dir)
    answer = settings.answer_stage
    data = _data(model, tasks, max(settings, answer, key=lambda s: s.steps), template, start)  # rows of both stages
    last = dataclasses.replace(settings, positions="last")
    last_data = (_data(model, tasks, last, template, start.replace(positions="last")) if settings.all_answer_tokens
                 else [(rows.at_last(), drawn) for rows, drawn in data])  # the same prefixes, the first position
    firsts = stage(start.replace(positions="last"), last, last_data, checkpoint_dir=_subdir(checkpoint_dir, "last"))
    first = HeadBlend.stack([r.blend for r in firsts])
    seconds = stage(first.replace(theta_answer=first.theta, positions="split"), answer, data,
                    checkpoint_dir=_subdir(checkpoint_dir, "answer"))
    return [_two_stages(a, b) for a, b in zip(firsts, seconds)]


def _stacked(arrays, shape: tuple, name: str) -> jax.Array:
    """`A` arrays `[L, N, H]` (or one `[A, L, N, H]`) as one float32 `[A, L, N, H]`, checked against `shape`."""
    stacked = jnp.asarray(np.stack([np.asarray(m, np.float32) for m in arrays]))
    if stacked.shape != shape:
        raise ValueError(f"fit_many needs one {name} [L, N, H] = {shape[1:]} per task ({shape[0]} tasks), "
                         f"got {stacked.shape}")
    return stacked


def _subdir(checkpoint_dir, name: str):
    return None if checkpoint_dir is None else Path(checkpoint_dir) / name


def _two_stages(first: FitResult, second: FitResult) -> FitResult:
    """A split fit's result from its stages'."""
    history = [{**h, "stage": "last"} for h in first.history] + [{**h, "stage": "answer"} for h in second.history]
    return second._replace(history=history)


def _fit_stage(model, tasks: Sequence[Task], start: HeadBlend, settings: FitConfig, data: list, *,
               template: Template, checkpoint_dir, resume: bool, run_info: dict | None) -> list[FitResult]:
    """One loop of `fit_many`: the fitted logits of `start` (stacked; `theta`, or `theta_answer`
    beside a frozen `theta` when it is split), from `settings.init` (`ANSWER_INIT` at the answer
    tokens), on `data` (`_data`'s); `start.mu` and `start.base` may be None when resuming."""
    config, params, _ = model
    A, L, N = len(tasks), config.n_layers, config.n_heads
    checkpoints = open_checkpoints(checkpoint_dir, resume, model=model, task=tasks if A > 1 else tasks[0],
                                   template=template, method="fit", settings=settings, run_info=run_info)
    means = {"mu": initial_means(start.mu, checkpoints, config, "fit", runs=A)}
    if settings.form == "shift":
        means["base"] = initial_means(start.base, checkpoints, config, "fit (form 'shift', its zero-shot means base)",
                                      runs=A)
    (train, drawn), (valid, valid_rows) = data
    row_task = np.repeat(np.arange(A), settings.batch_size)  # [A * B]
    valid_task = np.repeat(np.arange(A), [len(r) for r in valid_rows.rows])  # [R]
    theta = jnp.full((A, L, N), settings.init if start.positions != "split" else ANSWER_INIT, jnp.float32)
    state = {"theta": theta, "opt_state": optimizer(settings.optimizer, settings.learning_rate).init(theta),
             **means}
    frame = lambda state: start.replace(mu=state["mu"], base=state.get("base"))  # all but the fitted logits
    run = placed(fit_step(settings))

    def step(state, n):
        theta, opt_state, loss = run(params, state["theta"], state["opt_state"], frame(state),
                                     *batch(train, drawn.index(n - 1)), row_task, settings.sparsity, config=config)
        return {**state, "theta": theta, "opt_state": opt_state}, loss

    def validate(state):
        per_task = [np.bincount(valid_task, x.astype(np.float64), A) / np.bincount(valid_task, None, A)
                    for x in scores(params, frame(state).fitting(state["theta"]), valid, config=config,
                                    row_task=valid_task)]
        return per_task[0].tolist(), {"valid_loss": per_task[0].tolist(), "valid_first_token": per_task[1].tolist()}

    desc = f"fit {tasks[0].name if A == 1 else f'{A} tasks'}" + (" (answer tokens)" * (start.positions == "split"))
    trained = loop(step, validate, state, steps=settings.steps, eval_every=settings.eval_every,
                   keep=lambda state: state["theta"], desc=desc, checkpoints=checkpoints,
                   patience=settings.patience)
    best = frame(trained.state).fitting(trained.best)
    results = []
    for a, best_step in enumerate(trained.best_step):
        history = [{"step": h["step"], "train_loss": None if h["train_loss"] is None else h["train_loss"][a],
                    "valid_loss": h["valid_loss"][a], "valid_first_token": h["valid_first_token"][a]}
                   for h in trained.history]
        results.append(FitResult(best.task(a), best_step, trained.at(best_step)["valid_loss"][a], history))
    return results


class Drawn(NamedTuple):
    """Where each task's training rows sit among the prepared ones: only the rows its steps draw
    are prepared (`drawn_rows`), task after task."""

    rows: list  # per task: its drawn rows (sorted indices into its split)
    sizes: list  # per task: its split's size
    batch_size: int
    seed: int

    def index(self, step: int) -> np.ndarray:
        """`[A * B]` prepared rows of `step`: each task's `batch_indices`, task after task."""
        starts = np.cumsum([0] + [len(r) for r in self.rows[:-1]])
        return np.concatenate([start + np.searchsorted(rows, batch_indices(size, self.batch_size, step, self.seed))
                               for start, rows, size in zip(starts, self.rows, self.sizes)])


def _data(model, tasks: Sequence[Task], settings: FitConfig, template: Template, blend: HeadBlend) -> list:
    """`[(train rows, Drawn), (valid rows, Drawn)]` of the tasks for `blend` (`_rows`)."""
    return [_rows(model, tasks, split, settings, template, blend) for split in ("train", "valid")]


def _rows(model, tasks: Sequence[Task], split: str, settings: FitConfig, template: Template,
          blend: HeadBlend) -> tuple[Rows | Blocks, Drawn]:
    """The tasks' `split` prompts as rows for `blend`, task after task: on 'train' only the rows
    `settings`' steps draw."""
    prompts = [prompts_for(model.tokenizer, t, split, 0, template=template, seed=settings.seed)[0] for t in tasks]
    drawn = [drawn_rows(len(p), settings.batch_size, settings.steps, settings.seed) if split == "train"
             else np.arange(len(p)) for p in prompts]
    rows = prepare_rows(model, [p[i] for p, rows in zip(prompts, drawn) for i in rows], settings.all_answer_tokens,
                        intervention=blend)
    return rows, Drawn(drawn, [len(p) for p in prompts], settings.batch_size, settings.seed)
