"""Orbax checkpoints of a running fit: save asynchronously, keep a few, resume exactly.

A checkpoint step holds two items:
  state:    a pytree of arrays (for `fit`: theta `[L, N]`, the optimizer state and the
            best-so-far theta), saved with Orbax's `StandardSave`, so sharded arrays are
            written by their owners and restore onto any mesh given as the target.
  progress: JSON: the run description (model shape and id, task, hyperparameters,
            tvjax version) and the loop's scalars (best step and loss, history).

Orbax writes each step into a temporary directory and renames it when complete, so a
save interrupted by SIGKILL never loads as a checkpoint. The manager keeps the latest
`keep` steps plus the best one by validation loss.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


class ResumeError(ValueError):
    """A checkpoint directory that cannot be resumed: another run, or unreadable."""


class FitCheckpoints:
    """The checkpoint directory of one fit.

    Args:
      directory: where the steps go (created if missing).
      run: JSON-able description of the run; resuming requires an equal one.
      resume: continue from the latest step. Without it a directory that already holds
        checkpoints is refused, so nothing is overwritten.
      keep: how many of the latest steps to keep (the best one is kept as well).
    """

    def __init__(self, directory, run: dict, *, resume: bool = False, keep: int = 3):
        self.directory = Path(directory).absolute()
        self.run = json.loads(json.dumps(run, default=str))  # as it will read back
        policy = policies.AnyPreservationPolicy([
            policies.LatestN(n=keep),
            policies.BestN(get_metric_fn=_valid_loss, reverse=True, n=1),
        ])
        options = ocp.CheckpointManagerOptions(preservation_policy=policy, enable_async_checkpointing=True,
                                               best_fn=_valid_loss, best_mode="min")  # metrics written: a resumed
        # run's manager reads the earlier steps' losses, so its policy can drop them too
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        latest = self.manager.latest_step()
        if latest is not None and not resume:
            self.manager.close()
            raise ResumeError(f"{self.directory} already holds checkpoints (latest step {latest}): resume them "
                              f"(--resume, or resume=True) or choose another directory")

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def finished_step(self) -> int | None:
        """The latest step once every pending save has finished."""
        self.manager.wait_until_finished()
        return self.manager.latest_step()

    def save(self, step: int, state, progress: dict, valid_loss: float) -> None:
        """Start saving `state` (a pytree of arrays) and `progress` (JSON) as `step`."""
        state = jax.tree.map(lambda x: x.copy(), state)  # the caller may donate its buffers next
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  progress=ocp.args.JsonSave({"run": self.run, **progress}))
        self.manager.save(step, args=args, metrics={"valid_loss": float(valid_loss)})

    def restore(self, like) -> tuple[int, object, dict]:
        """The latest step as `(step, state, progress)`; `state` takes the structure,
        dtypes and shardings of `like` (arrays or `jax.ShapeDtypeStruct`s)."""
        step = self.manager.latest_step()
        if step is None:
            raise ResumeError(f"no checkpoint to resume in {self.directory}")
        where = f"checkpoint step {step} in {self.directory}"
        try:
            progress = self.manager.restore(step, args=ocp.args.Composite(progress=ocp.args.JsonRestore()))
            progress = dict(progress["progress"])
        except Exception as e:
            raise ResumeError(f"{where} is unreadable (corrupted or truncated?): {e}") from e
        saved = progress.pop("run", None) or {}
        if saved != self.run:
            raise ResumeError(f"{where} belongs to another run: {_difference(saved, self.run)}; "
                              f"resume with the same model, task and settings, or use another directory")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        except Exception as e:
            raise ResumeError(f"{where} is unreadable (corrupted or truncated?): {e}") from e
        return step, restored["state"], progress

    def close(self) -> None:
        """Wait for pending saves and release the manager."""
        self.manager.wait_until_finished()
        self.manager.close()


def _valid_loss(metrics: dict) -> float:
    return metrics["valid_loss"]


def has_checkpoints(directory) -> bool:
    """Whether `directory` holds a complete checkpoint step (False for None).

    Orbax names a step's directory by its number only once the step is complete.
    """
    return directory is not None and any(p.name.isdigit() for p in Path(directory).glob("*"))


def _difference(saved: dict, run: dict) -> str:
    """The run fields that differ, as `key: saved (now wanted)`."""
    keys = sorted(k for k in saved.keys() | run.keys() if saved.get(k) != run.get(k))
    return ", ".join(f"{k} {saved.get(k)!r} (now {run.get(k)!r})" for k in keys)
