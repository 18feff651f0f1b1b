"""One training loop for every fitted method: seeded batches, validation, best-step keeping,
progress, and Orbax checkpoints that resume exactly.

A method supplies a `step` (one optimizer update of its state), a `validate` (an objective
to minimise and a record for the history) and `keep` (the part of the state worth keeping
at the best validation). `loop` does the rest; the data order is a function of
(seed, step), so a resumed run is the same run.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from tvjax import __version__
from tvjax.checkpoint import FitCheckpoints, ResumeError
from tvjax.data import Task, Template
from tvjax.taskvector import model_shape

State = Any  # a pytree of arrays


class Trained(NamedTuple):
    state: State  # after the last step
    best: State  # `keep(state)` at the best validation
    best_step: int
    best_record: dict  # the history entry of the best step
    history: list  # dicts: step, train_loss (mean since the last validation), and validate's record


def optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    """`optax.<name>(learning_rate)`, with a clear error for an unknown name."""
    make = getattr(optax, name, None)
    if name.startswith("_") or not callable(make):
        raise ValueError(f"unknown optax optimizer {name!r}; e.g. adam, adamw, sgd, lion, rmsprop")
    return make(learning_rate)


def batch_indices(n_rows: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Rows of training step `step`: consecutive slices of seeded per-epoch permutations."""
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n_rows)
        order = np.random.default_rng([seed, epoch]).permutation(n_rows)
        out.extend(order[offset: offset + batch_size - len(out)])
    return np.asarray(out, np.int32)


def open_checkpoints(checkpoint_dir, resume: bool, *, model, task: Task, template: Template, method: str,
                     settings, run_info: dict | None = None) -> FitCheckpoints | None:
    """The checkpoints of one method's run (None without `checkpoint_dir`), described so that
    resuming with another model, task, template or setting (but the step count) is refused."""
    if checkpoint_dir is None:
        return None
    run = {"model": model_shape(model.config), "task": task.name, "task_digest": task.digest(),
           "template": template.text, method: {k: v for k, v in dataclasses.asdict(settings).items() if k != "steps"},
           "tvjax_version": __version__, **(run_info or {})}
    return FitCheckpoints(checkpoint_dir, run, resume=resume)


def resumable(checkpoints: FitCheckpoints | None) -> bool:
    """Whether `checkpoints` hold a step to resume from."""
    return checkpoints is not None and checkpoints.latest_step() is not None


def loop(step: Callable[[State, int], tuple[State, jax.Array]], validate: Callable[[State], tuple[float, dict]],
         state: State, *, steps: int, eval_every: int, keep: Callable[[State], State], desc: str,
         checkpoints: FitCheckpoints | None = None) -> Trained:
    """Run `step` for steps 1..`steps`, validating every `eval_every` steps and at the end.

    Args:
      step: `(state, n) -> (state, loss)`, the n-th update (it may donate `state`'s buffers).
      validate: `state -> (objective, record)`; the lowest objective's step is kept, `record`
        (JSON-able) goes into the history.
      state: the initial state (step 0), or the structure to restore into when resuming.
      keep: what of the state to keep at the best validation (copied: `step` may donate it).
      checkpoints: save `(state, best)` and the history at every validation; when they hold a
        step, continue from it.
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
        best_step, history = 0, [{"step": 0, "train_loss": None, **record}]
    running = []
    bar = tqdm(range(start + 1, steps + 1), desc=desc, leave=False, disable=None, initial=start, total=steps)
    try:
        for n in bar:
            state, loss = step(state, n)
            running.append(loss)
            if n % eval_every == 0 or n == steps:
                objective, record = validate(state)
                history.append({"step": n, "train_loss": float(np.mean(running)), **record})
                running = []
                bar.set_postfix({k: f"{v:.3f}" if isinstance(v, float) else v for k, v in history[-1].items()
                                 if k != "step"})
                if objective < best_objective:
                    best, best_objective, best_step = _copy(keep(state)), objective, n
                if checkpoints is not None:
                    checkpoints.save(n, {"state": state, "best": best},
                                     {"best_objective": best_objective, "best_step": best_step, "history": history},
                                     objective)
    finally:
        if checkpoints is not None:
            checkpoints.close()
    best_record = next(h for h in history if h["step"] == best_step)
    return Trained(state, best, best_step, best_record, history)


def _copy(tree: State) -> State:
    return jax.tree.map(jnp.array, tree)
