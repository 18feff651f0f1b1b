"""One training loop for every fitted method: the jitted optimizer step, seeded batches,
validation, best-step keeping, progress, and Orbax checkpoints that resume exactly.

A method supplies its loss; `train_step` makes the jitted Optax step from it (penzai's
`basic_training` shape), which `tvjax.sharding.placed` runs on the params' mesh. The loop takes a `step` (one update of the method's state), a `validate` (an objective
to minimise and a record for the history) and `keep` (the part of the state worth keeping
at the best validation), and does the rest; the data order is a function of
(seed, step), so a resumed run is the same run. Many runs share one loop when the objective
has one value per run (`[A]`, e.g. one per task): each run keeps its own best step, along
the leading axis of what `keep` returns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import signal
import threading
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from tvjax.version import __version__
from tvjax.checkpoint import FitCheckpoints, ResumeError
from tvjax.data import Task, Template
from tvjax.fields import Allowed
from tvjax.sharding import constrain
from tvjax.vocabulary import model_shape

State = Any  # a pytree of arrays


class Trained(NamedTuple):
    state: State  # after the last step
    best: State  # `keep(state)` at the best validation (of each run, for per-run objectives)
    best_step: int | list[int]  # one per run for per-run objectives
    history: list  # dicts: step, train_loss (mean since the last validation), and validate's record

    def at(self, step: int) -> dict:
        """The history entry of `step`."""
        return next(h for h in self.history if h["step"] == step)


OPTIMIZER = Allowed(lambda name: isinstance(name, str) and not name.startswith("_")
                    and callable(getattr(optax, name, None)), "an optax optimizer, e.g. adam, adamw, sgd, lion, rmsprop")


def optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    """`optax.<name>(learning_rate)`, with a clear error for an unknown name."""
    if not OPTIMIZER.test(name):
        raise ValueError(f"unknown optax optimizer {name!r}: must be {OPTIMIZER.says}")
    return getattr(optax, name)(learning_rate)


@functools.cache
def train_step(loss: Callable, optimizer_name: str, learning_rate: float, **static) -> Callable:
    """The jitted optimizer step of `loss`, made once per (loss, optimizer, learning rate, `static`).

    Args:
      loss: `loss(trained, params, *data, config=..., **static) -> (objective, report)`, a
        module-level function (so that compiled steps are reused): `objective` the scalar
        minimised, `report` what the step returns (e.g. the loss, or one per task).
      static: hashable settings `loss` takes by keyword (compiled in).
    Returns:
      `step(params, trained, opt_state, *data, config=...) -> (trained, opt_state, report)`,
      jitted, `trained` and `opt_state` donated; `tvjax.sharding.placed(step)` runs it on the
      params' mesh, each argument placed by its own `axes()` (`trained` replicated).
    """
    update = optimizer(optimizer_name, learning_rate).update

    @functools.partial(jax.jit, static_argnames="config", donate_argnums=(1, 2))
    def step(params, trained, opt_state, *data, config):
        (_, report), grad = jax.value_and_grad(loss, has_aux=True)(trained, params, *data, config=config, **static)
        updates, opt_state = update(grad, opt_state, trained)
        return constrain((optax.apply_updates(trained, updates), opt_state, report), None)

    return step


def batch_indices(n_rows: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Rows of training step `step`: consecutive slices of seeded per-epoch permutations."""
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n_rows)
        order = np.random.default_rng([seed, epoch]).permutation(n_rows)
        out.extend(order[offset: offset + batch_size - len(out)])
    return np.asarray(out, np.int32)


def drawn_rows(n_rows: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
    """The sorted rows that `steps` steps of `batch_indices` draw (all once the steps pass an
    epoch): the only rows a run needs to prepare."""
    return np.unique(batch_indices(n_rows, min(steps * batch_size, n_rows), 0, seed))


def open_checkpoints(checkpoint_dir, resume: bool, *, model, task: Task | Sequence[Task], template: Template,
                     method: str, settings, run_info: dict | None = None) -> FitCheckpoints | None:
    """The checkpoints of one method's run on a task or a list of tasks (None without
    `checkpoint_dir`), described so that resuming with another model, task, template or setting
    (but the step count) is refused."""
    if checkpoint_dir is None:
        return None
    names, digests = ((task.name, task.digest()) if isinstance(task, Task)
                      else ([t.name for t in task], [t.digest() for t in task]))
    run = {"model": model_shape(model.config), "task": names, "task_digest": digests,
           "template": template.text, method: {k: v for k, v in dataclasses.asdict(settings).items() if k != "steps"},
           "tvjax_version": __version__, **(run_info or {})}
    return FitCheckpoints(checkpoint_dir, run, resume=resume)


def resumable(checkpoints: FitCheckpoints | None) -> bool:
    """Whether `checkpoints` hold a step to resume from."""
    return checkpoints is not None and checkpoints.latest_step() is not None


def initial_means(mu, checkpoints: FitCheckpoints | None, config, who: str, runs: int | None = None) -> jax.Array:
    """`mu` `[L, N, H]` (`[runs, L, N, H]` for many runs) as float32 for a run's initial state; it
    may be None only when resuming (zeros then, replaced by the checkpoint's)."""
    if mu is None and not resumable(checkpoints):
        raise ValueError(f"{who} needs the head means mu [L, N, H] (only a resumed run takes them from its "
                         f"checkpoint)")
    shape = (*([] if runs is None else [runs]), config.n_layers, config.n_heads, config.head_dim)
    return jnp.zeros(shape, jnp.float32) if mu is None else jnp.asarray(mu, jnp.float32)


def loop(step: Callable[[State, int], tuple[State, jax.Array]], validate: Callable[[State], tuple[float, dict]],
         state: State, *, steps: int, eval_every: int, keep: Callable[[State], State], desc: str,
         checkpoints: FitCheckpoints | None = None, patience: int = 0) -> Trained:
    """Run `step` for steps 1..`steps`, validating every `eval_every` steps and at the end, or
    until `patience` validations in a row (of every run) have not improved on the best.

    Args:
      step: `(state, n) -> (state, loss)`, the n-th update (it may donate `state`'s buffers);
        `loss` a scalar, or `[A]` for many runs.
      validate: `state -> (objective, record)`; the lowest objective's step is kept, `record`
        (JSON-able) goes into the history. The objective is a float, or a list of `A` floats:
        then each run keeps its own best, `keep(state)`'s leaves indexed along their first axis.
      state: the initial state (step 0), or the structure to restore into when resuming.
      keep: what of the state to keep at the best validation (copied: `step` may donate it).
      checkpoints: save `(state, best)` and the history at every validation; when they hold a
        step, continue from it.
      patience: stop early once every run's best is `patience` validations old (0: never).
        Read from the history, so a resumed run stops where the run would have.
    """
    if resumable(checkpoints):
        start, saved, progress = checkpoints.restore({"state": state, "best": keep(state)})
        if start > steps:
            checkpoints.close()
            raise ResumeError(f"the checkpoint is at step {start}, past the {steps} steps asked for")
        state, best = saved["state"], saved["best"]
        best_objective, best_step, history = progress["best_objective"], progress["best_step"], progress["history"]
    else:
        start, best = 0, _copy(keep(state))
        best_objective, record = validate(state)
        best_step = np.zeros(np.shape(best_objective), int).tolist()  # 0, or one 0 per run
        history = [{"step": 0, "train_loss": None, **record}]
    running = []
    if patience and _stale(history, best_step) >= patience:
        steps = start  # a resumed run that had already stopped
    bar = tqdm(range(start + 1, steps + 1), desc=desc, leave=False, disable=None, initial=start, total=steps)
    n = start
    try:
        with _ctrl_c() as asked:
            for n in bar:
                state, loss = step(state, n)
                running.append(loss)
                if n % eval_every == 0 or n == steps:
                    objective, record = validate(state)
                    history.append({"step": n, "train_loss": np.mean(np.stack(running), axis=0).tolist(), **record})
                    running = []
                    bar.set_postfix({k: f"{np.mean(v):.3f}" for k, v in history[-1].items() if k != "step"})
                    improved = np.asarray(objective) < np.asarray(best_objective)  # a bool, or one per run
                    if improved.any():
                        best = _where(improved, keep(state), best)
                        best_objective = np.where(improved, objective, best_objective).tolist()
                        best_step = np.where(improved, n, best_step).tolist()
                    if checkpoints is not None:
                        checkpoints.save(n, {"state": state, "best": best},
                                         {"best_objective": best_objective, "best_step": best_step, "history": history},
                                         float(np.mean(objective)))
                    if patience and _stale(history, best_step) >= patience:
                        break
                if asked:  # Ctrl-C: stop between steps
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        raise Interrupted(desc, n, checkpoints and checkpoints.finished_step()) from None
    finally:
        bar.close()
        if checkpoints is not None:
            checkpoints.close()
    return Trained(state, best, best_step, history)


@contextlib.contextmanager
def _ctrl_c():
    """While open, Ctrl-C (SIGINT) is a request, `asked` (a list) turning true, so that a loop stops
    between its steps (and its checkpoint writes); a second Ctrl-C interrupts at once."""
    asked = []
    if threading.current_thread() is not threading.main_thread():  # only the main thread handles signals
        yield asked
        return

    def ask(signum, frame):
        asked.append(signum)
        signal.signal(signal.SIGINT, previous)

    previous = signal.signal(signal.SIGINT, ask)
    try:
        yield asked
    finally:
        signal.signal(signal.SIGINT, previous)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C in a training loop, once its checkpoint writes have finished: where it stopped and
    where resuming continues."""

    def __init__(self, desc: str, step: int, saved: int | None):
        self.step, self.saved = step, saved
        resume = (f"resuming continues from step {saved}, the latest checkpoint (--resume, resume=True)"
                  if saved is not None else "nothing was saved: with --resume (or --checkpoint-dir) a fit keeps "
                                            "checkpoints and continues after an interruption")
        super().__init__(f"{desc} interrupted at step {step}; {resume}")


def _stale(history: list, best_step) -> int:
    """Validations since the most recent of the runs' best steps."""
    return sum(h["step"] > np.max(best_step) for h in history)


def _copy(tree: State) -> State:
    return jax.tree.map(jnp.array, tree)


def _where(improved: np.ndarray, new: State, old: State) -> State:
    """`new` where `improved` (a bool, or `[A]` along the leaves' first axis), else `old` (a copy)."""
    pick = lambda a, b: jnp.where(improved.reshape(improved.shape + (1,) * (a.ndim - improved.ndim)), a, b)
    return jax.tree.map(pick, new, old)
