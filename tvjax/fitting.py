"""Fit a soft task vector: learn `theta [L, N]` with Optax, model params and means fixed.

A client of the engine: prompt rows with cached prefixes (`tvjax.rows`) and the shared
training loop (`tvjax.train`). A step runs only each row's suffix on top of its cached
prefix, so the loop is cheap and compiles once.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tvjax.config import ModelConfig
from tvjax.data import Task, Template, prompts_for
from tvjax.extract import extract_means, extract_means_many
from tvjax.interventions import HeadBlend, RowBlend
from tvjax.model import param_axes
from tvjax.rows import ROWS_AXES, Rows, prepare_rows, row_losses, scores, take
from tvjax.sharding import constrain, on_mesh, put
from tvjax.taskvector import check_positions
from tvjax.train import batch_indices, drawn_rows, initial_means, loop, open_checkpoints, optimizer


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Hyperparameters of `fit`: the published recipe (Adam, learning rate 0.2, batch 1, weights
    starting at 0.5) for 800 steps, chosen by valid accuracy over the built-in suite with
    scripts/sweep_fit.py on the default model (docs/method.md has the sweep)."""

    steps: int = 800
    learning_rate: float = 0.2
    batch_size: int = 1
    init: float = 0.0  # initial theta: sigmoid(0) = 0.5 weight on the means
    seed: int = 0
    eval_every: int = 80
    sparsity: float = 0.0  # penalty weight on mean(sigmoid(theta))
    optimizer: str = "adam"  # any optax optimizer taking a learning rate: adam, adamw, sgd, lion, ...
    all_answer_tokens: bool = False  # loss on every answer token instead of the first
    positions: str = "last"  # where theta acts: 'last' prompt token, or 'answer': also every answer token
    # (teacher-forced here, generated in evaluation), with the loss on every answer token, or 'split':
    # theta fitted as 'last' fits it, then frozen while a second theta of its own at the answer tokens
    # (theta_answer, HeadBlend.of; from ANSWER_INIT) is fitted, `steps` more, on the answer tokens after
    # the first and the stop
    form: str = "blend"  # how a head moves: 'blend' o + sigmoid(theta) * (mu - o), toward its task mean, or
    # 'shift' o + 2 * sigmoid(theta) * (mu - base), by the difference between its ICL and zero-shot means
    # (`HeadBlend.base`), keeping what it carries about the query

    def __post_init__(self):
        check_positions(self.positions)
        if self.form not in FORMS:
            raise ValueError(f"form={self.form!r}: a soft task vector's form is {' or '.join(map(repr, FORMS))}")


FORMS = ("blend", "shift")


# Where positions 'split' starts theta_answer: weight sigmoid(-6) = 0.25% on the means, so the
# answer stage starts from the first stage's generation, and its best validation is never worse.
ANSWER_INIT = -6.0


class FitResult(NamedTuple):
    blend: HeadBlend  # theta with the best validation loss
    best_step: int
    best_valid_loss: float
    history: list  # dicts: step, train_loss (mean since the last eval), valid_loss, valid_first_token (accuracy)


def train_step(theta, opt_state, mu, params, rows: Rows, index, sparsity, frozen=None, base=None, *,
               config: ModelConfig, learning_rate: float, optimizer_name: str = "adam"):
    """One optimizer step on `theta` `[L, N]` over the rows at `index` `[B]`; returns (theta, opt_state, loss).

    With `frozen` `[L, N]` (positions 'split'), `frozen` is the fixed `theta` at the last prompt
    token and the fitted `theta` is `theta_answer`. `base` `[L, N, H]`: the shift form's
    zero-shot means (`HeadBlend.base`; None: the blend form). On a mesh (params from `tvjax.load(..., mesh=...)`)
    theta, its optimizer state, index and loss are replicated, mu, params and rows sharded by
    `tvjax.sharding`'s table.
    """
    with on_mesh(params):
        return _train_step(*_placed(theta, opt_state, mu, params, rows, index, sparsity), put(frozen, None),
                           put(base, "LNH"), config=config, learning_rate=learning_rate, optimizer_name=optimizer_name)


def lower_train_step(mesh, theta, opt_state, mu, params, rows: Rows, index, sparsity, **static):
    """`train_step` on `mesh`, lowered for these arrays or `jax.ShapeDtypeStruct`s (memory planning)."""
    with jax.set_mesh(mesh):
        params = put(params, param_axes(static["config"]))
        return _train_step.lower(*_placed(theta, opt_state, mu, params, rows, index, sparsity), **static)


def _placed(theta, opt_state, mu, params, rows, index, sparsity) -> tuple:
    """The step's arguments on the mesh in context: mu split over heads, rows over rows, the rest replicated."""
    return (put(theta, None), put(opt_state, None), put(mu, "LNH"), params, put(rows, ROWS_AXES), put(index, None),
            put(sparsity, None))


def _logits(theta, frozen):
    """The blend logits: `theta`, or `[..., 2, L, N]` with the frozen last-token logits first."""
    return theta if frozen is None else jnp.stack([frozen, theta], axis=-3)


@functools.partial(jax.jit, static_argnames=("config", "learning_rate", "optimizer_name"),
                   donate_argnames=("theta", "opt_state"))
def _train_step(theta, opt_state, mu, params, rows: Rows, index, sparsity, frozen=None, base=None, *,
                config: ModelConfig, learning_rate: float, optimizer_name: str = "adam"):

    def loss_fn(theta):
        losses = row_losses(params, config, HeadBlend.of(_logits(theta, frozen), mu, base), take(rows, index))
        return losses.mean() + sparsity * jax.nn.sigmoid(theta).mean()

    loss, grad = jax.value_and_grad(loss_fn)(theta)
    updates, opt_state = optimizer(optimizer_name, learning_rate).update(grad, opt_state, theta)
    return constrain((optax.apply_updates(theta, updates), opt_state, loss), None)


def fit(model, task: Task, mu, settings: FitConfig = FitConfig(), *, template: Template = Template(),
        checkpoint_dir=None, resume: bool = False, run_info: dict | None = None, base=None) -> FitResult:
    """Fit `theta` on zero-shot train prompts; keep the one with the best validation loss.

    With positions 'split' the fit has two stages: `theta` as positions 'last' fits it, then
    `theta_answer` with `theta` frozen, so the first answer token keeps the first stage's
    accuracy and the second learns the rest of the answer and its end. Its history holds both
    stages (each entry's `stage`: 'last' or 'answer'), its best step is the answer stage's.

    Args:
      model: a `tvjax.Model`.  task: the `Task`.  mu: `[L, N, H]` head means (may be None
        when resuming: the checkpoint's are used).
      settings: the `FitConfig` (`config` is always the `ModelConfig`).
      checkpoint_dir: save an Orbax checkpoint at every validation (see `tvjax.checkpoint`);
        with positions 'split', each stage in its own subfolder ('last', 'answer').
      resume: continue from the latest checkpoint in `checkpoint_dir` (if there is one).
        The data order is a function of (seed, step), so the resumed run is the same run.
      run_info: extra JSON-able run description (e.g. the model id) that must match on resume.
      base: with form 'shift', the zero-shot head means `[L, N, H]`; None: `extract_means` of
        zero-shot train prompts (none when `mu` is None: a resumed run takes its checkpoint's).
    """
    if settings.form == "shift" and base is None and mu is not None:
        base = extract_means(model, task, shots=0, template=template, seed=settings.seed)
    stage = functools.partial(_fit_stage, model, task, template=template, resume=resume, run_info=run_info)
    if settings.positions != "split":
        return stage(mu, base, settings, checkpoint_dir=checkpoint_dir)
    first = stage(mu, base, dataclasses.replace(settings, positions="last"),
                  checkpoint_dir=_subdir(checkpoint_dir, "last"))
    second = stage(first.blend.mu, first.blend.base, settings, frozen=first.blend.theta,
                   checkpoint_dir=_subdir(checkpoint_dir, "answer"))
    return _two_stages(first, second)


def _subdir(checkpoint_dir, name: str):
    return None if checkpoint_dir is None else Path(checkpoint_dir) / name


def _two_stages(first: FitResult, second: FitResult) -> FitResult:
    """A split fit's result from its stages' (`fit`)."""
    history = [{**h, "stage": "last"} for h in first.history] + [{**h, "stage": "answer"} for h in second.history]
    return second._replace(history=history)


def _fit_stage(model, task: Task, mu, base, settings: FitConfig, *, template: Template, checkpoint_dir,
               resume: bool, run_info: dict | None, frozen=None) -> FitResult:
    """One loop of `fit`: `theta`, or `theta_answer` beside a `frozen` `theta` `[L, N]`."""
    config, params, _ = model
    checkpoints = open_checkpoints(checkpoint_dir, resume, model=model, task=task, template=template, method="fit",
                                   settings=settings, run_info=run_info)
    means = _means(mu, base, settings, checkpoints, config, "fit")
    (train, drawn), (valid, _) = (_rows(model, [task], split, settings, template) for split in ("train", "valid"))
    theta = jnp.full((config.n_layers, config.n_heads), settings.init if frozen is None else ANSWER_INIT, jnp.float32)
    state = {"theta": theta, "opt_state": optimizer(settings.optimizer, settings.learning_rate).init(theta), **means}

    def step(state, n):
        index = drawn.index(n - 1)
        theta, opt_state, loss = train_step(state["theta"], state["opt_state"], state["mu"], params, train, index,
                                            settings.sparsity, frozen, state.get("base"), config=config,
                                            learning_rate=settings.learning_rate,
                                            optimizer_name=settings.optimizer)
        return {**state, "theta": theta, "opt_state": opt_state}, loss

    def validate(state):
        losses, hits = scores(params, _blend(state, frozen), valid, config=config)
        loss = float(np.mean(np.asarray(losses, np.float64)))
        return loss, {"valid_loss": loss, "valid_first_token": float(np.mean(hits))}

    desc = f"fit {task.name}" + ("" if frozen is None else " (answer tokens)")
    trained = loop(step, validate, state, steps=settings.steps, eval_every=settings.eval_every,
                   keep=lambda state: state["theta"], desc=desc, checkpoints=checkpoints)
    return FitResult(_blend({**trained.state, "theta": trained.best}, frozen), trained.best_step,
                     trained.at(trained.best_step)["valid_loss"], trained.history)


def _means(mu, base, settings: FitConfig, checkpoints, config, who: str, runs: int | None = None) -> dict:
    """A run's initial means: `{"mu": ...}`, plus `"base"` for the shift form (see `initial_means`)."""
    means = {"mu": initial_means(mu, checkpoints, config, who, runs)}
    if settings.form == "shift":
        means["base"] = initial_means(base, checkpoints, config, f"{who} (form 'shift', its zero-shot means base)", runs)
    return means


def _blend(state: dict, frozen=None) -> HeadBlend:
    """The `HeadBlend` of a fit's state (`theta`, `mu`, `base` when it has one)."""
    return HeadBlend.of(_logits(state["theta"], frozen), state["mu"], state.get("base"))


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


def _rows(model, tasks: Sequence[Task], split: str, settings: FitConfig, template: Template) -> tuple[Rows, Drawn]:
    """The tasks' `split` prompts as rows, task after task: on 'train' only the rows `settings`' steps draw."""
    prompts = [prompts_for(model.tokenizer, t, split, 0, template=template, seed=settings.seed)[0] for t in tasks]
    drawn = [drawn_rows(len(p), settings.batch_size, settings.steps, settings.seed) if split == "train"
             else np.arange(len(p)) for p in prompts]
    rows = prepare_rows(model, [p[i] for p, rows in zip(prompts, drawn) for i in rows], settings.all_answer_tokens,
                        positions=settings.positions)
    return rows, Drawn(drawn, [len(p) for p in prompts], settings.batch_size, settings.seed)


def train_step_many(theta, opt_state, mu, params, rows: Rows, index, task, sparsity, frozen=None, base=None, *,
                    config: ModelConfig, learning_rate: float, optimizer_name: str = "adam"):
    """One optimizer step on the `A` tasks' `theta` `[A, L, N]` over the rows at `index` `[A * B]`
    (row `i` of task `task[i]`, `B` per task); returns (theta, opt_state, loss `[A]`). `frozen`
    `[A, L, N]` and `base` `[A, L, N, H]`: as in `train_step`.

    Each task's loss (its rows' mean plus its sparsity penalty) depends on its own theta only,
    so the gradient of their sum is each task's own gradient, and an elementwise optimizer
    (adam, sgd, lion, ...) steps each task as `train_step` would step it alone.
    """
    with on_mesh(params):
        return _train_step_many(put(theta, None), put(opt_state, None), put(mu, "ALNH"), params,
                                put(rows, ROWS_AXES), put(index, None), put(task, None), put(sparsity, None),
                                put(frozen, None), put(base, "ALNH"), config=config, learning_rate=learning_rate,
                                optimizer_name=optimizer_name)


@functools.partial(jax.jit, static_argnames=("config", "learning_rate", "optimizer_name"),
                   donate_argnames=("theta", "opt_state"))
def _train_step_many(theta, opt_state, mu, params, rows: Rows, index, task, sparsity, frozen=None, base=None, *,
                     config: ModelConfig, learning_rate: float, optimizer_name: str = "adam"):

    def loss_fn(theta):
        blend = RowBlend.gather(_logits(theta, frozen), mu, task, base)
        per_row = row_losses(params, config, blend, take(rows, index))  # [A * B]
        per_task = per_row.reshape(theta.shape[0], -1).mean(1) + sparsity * jax.nn.sigmoid(theta).mean(tuple(range(1, theta.ndim)))
        return per_task.sum(), per_task

    (_, loss), grad = jax.value_and_grad(loss_fn, has_aux=True)(theta)
    updates, opt_state = optimizer(optimizer_name, learning_rate).update(grad, opt_state, theta)
    return constrain((optax.apply_updates(theta, updates), opt_state, loss), None)


def fit_many(model, tasks: Sequence[Task], mus, settings: FitConfig = FitConfig(), *,
             template: Template = Template(), checkpoint_dir=None, resume: bool = False,
             run_info: dict | None = None, bases=None) -> list[FitResult]:
    """Fit one `theta` per task in one loop: what `fit` gives each task alone, for one pass over the weights.

    Every step's batch holds `settings.batch_size` train rows of each task (each task's own
    seeded order), each row blended with its task's vector (`RowBlend`); each task has its
    own optimizer state, validation loss and best step. Equal to fitting each task alone
    with the same seed up to float rounding (prompts are padded to the longest of all tasks).
    Positions 'split' fits in `fit`'s two stages, one loop each.

    Args:
      tasks: `A` tasks.  mus: their head means, `A` arrays `[L, N, H]` (or one `[A, L, N, H]`;
        may be None when resuming: the checkpoint's are used).
      checkpoint_dir: as in `fit` (one checkpoint holds every task's state); so are `resume`
        and `run_info`.
      bases: with form 'shift', their zero-shot means (as `mus`); None: as in `fit`.
    Returns:
      One `FitResult` per task, in order.
    """
    config = model.config
    A, L, N, H = len(tasks), config.n_layers, config.n_heads, config.head_dim
    if settings.form == "shift" and bases is None and mus is not None:
        bases = extract_means_many(model, tasks, shots=0, template=template, seed=settings.seed)
    mu, base = (None if xs is None else _stacked(xs, (A, L, N, H), name) for xs, name in ((mus, "mean"), (bases, "base")))
    stage = functools.partial(_fit_many_stage, model, tasks, template=template, resume=resume, run_info=run_info)
    if settings.positions != "split":
        return stage(mu, base, settings, checkpoint_dir=checkpoint_dir)
    firsts = stage(mu, base, dataclasses.replace(settings, positions="last"),
                   checkpoint_dir=_subdir(checkpoint_dir, "last"))
    stacked = lambda name: None if getattr(firsts[0].blend, name) is None else \
        jnp.stack([getattr(r.blend, name) for r in firsts])
    seconds = stage(stacked("mu"), stacked("base"), settings, frozen=stacked("theta"),
                    checkpoint_dir=_subdir(checkpoint_dir, "answer"))
    return [_two_stages(first, second) for first, second in zip(firsts, seconds)]


def _stacked(arrays, shape: tuple, name: str) -> jax.Array:
    """`A` arrays `[L, N, H]` (or one `[A, L, N, H]`) as one float32 `[A, L, N, H]`, checked against `shape`."""
    stacked = jnp.asarray(np.stack([np.asarray(m, np.float32) for m in arrays]))
    if stacked.shape != shape:
        raise ValueError(f"fit_many needs one {name} [L, N, H] = {shape[1:]} per task ({shape[0]} tasks), "
                         f"got {stacked.shape}")
    return stacked


def _fit_many_stage(model, tasks: Sequence[Task], mu, base, settings: FitConfig, *, template: Template,
                    checkpoint_dir, resume: bool, run_info: dict | None, frozen=None) -> list[FitResult]:
    """One loop of `fit_many` (`mu`, `base` `[A, L, N, H]`; `frozen` `[A, L, N]` as in `_fit_stage`)."""
    config, params, _ = model
    A, L, N = len(tasks), config.n_layers, config.n_heads
    checkpoints = open_checkpoints(checkpoint_dir, resume, model=model, task=tasks, template=template,
                                   method="fit_many", settings=settings, run_info=run_info)
    means = _means(mu, base, settings, checkpoints, config, "fit_many", runs=A)
    (train, drawn), (valid, valid_rows) = (_rows(model, tasks, split, settings, template)
                                           for split in ("train", "valid"))
    row_task = np.repeat(np.arange(A), settings.batch_size)  # [A * B]
    valid_task = np.repeat(np.arange(A), [len(r) for r in valid_rows.rows])  # [R]
    theta = jnp.full((A, L, N), settings.init if frozen is None else ANSWER_INIT, jnp.float32)
    state = {"theta": theta, "opt_state": optimizer(settings.optimizer, settings.learning_rate).init(theta), **means}

    def step(state, n):
        index = drawn.index(n - 1)
        theta, opt_state, loss = train_step_many(state["theta"], state["opt_state"], state["mu"], params, train,
                                                 index, row_task, settings.sparsity, frozen, state.get("base"),
                                                 config=config, learning_rate=settings.learning_rate,
                                                 optimizer_name=settings.optimizer)
        return {**state, "theta": theta, "opt_state": opt_state}, loss

    def validate(state):
        blend = RowBlend.gather(_logits(state["theta"], frozen), state["mu"], valid_task, state.get("base"))
        per_task = [np.bincount(valid_task, np.asarray(x, np.float64), A) / np.bincount(valid_task, None, A)
                    for x in scores(params, blend, valid, config=config)]
        return per_task[0].tolist(), {"valid_loss": per_task[0].tolist(), "valid_first_token": per_task[1].tolist()}

    desc = f"fit {A} tasks" + ("" if frozen is None else " (answer tokens)")
    trained = loop(step, validate, state, steps=settings.steps, eval_every=settings.eval_every,
                   keep=lambda state: state["theta"], desc=desc, checkpoints=checkpoints)
    best, mu, base = _logits(trained.best, frozen), trained.state["mu"], trained.state.get("base")
    results = []
    for a, best_step in enumerate(trained.best_step):
        history = [{"step": h["step"], "train_loss": None if h["train_loss"] is None else h["train_loss"][a],
                    "valid_loss": h["valid_loss"][a], "valid_first_token": h["valid_first_token"][a]}
                   for h in trained.history]
        results.append(FitResult(HeadBlend.of(best[a], mu[a], None if base is None else base[a]), best_step,
                                 trained.at(best_step)["valid_loss"][a], history))
    return results
