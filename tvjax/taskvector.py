"""Intervention files: safetensors arrays plus JSON metadata, readable without JAX.

One `.safetensors` file holds one intervention, of one of two kinds:

- `head_blend` (the soft task vector, and REINFORCE's hard head sets): `theta` `[L, N]`
  (blend logits; `+inf` replaces a head by its mean exactly) and `mu` `[L, N, H]` (head means),
  plus `theta_answer` `[L, N]` in a vector fitted with positions 'split' (the logits at the
  answer tokens) and `base` `[L, N, H]` in one of the shift form (the zero-shot head means:
  a head moves by `2 * sigmoid(theta) * (mu - base)`, see `tvjax.HeadBlend`);
- `residual_edit` (function vectors, ICL layer patches): `add` `[L, D]`, `target` `[L, D]`
  and `weight` `[L]`, the arrays of `tvjax.ResidualEdit`.

All float32. The header metadata holds `format`, `format_version`, `kind`, the model's shape
(`family`, `n_layers`, `n_heads`, `head_dim`, `d_model`) and free-form JSON `info` (model
name, task, method, hyperparameters, scores, tvjax version). Version 1 files (no `kind`) are
head blends.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

FORMAT = "tvjax-task-vector"
FORMAT_VERSION = 2
SHAPE_KEYS = ("family", "n_layers", "n_heads", "head_dim", "d_model")
KINDS = ("head_blend", "residual_edit")
INFINITE_ALLOWED = ("theta", "theta_answer")  # +-inf theta: a head exactly replaced by its mean, or exactly untouched
# Where an intervention acts: the last prompt token only, or also every answer token after it
# (each generated token; in fitting, each teacher-forced answer token), with the same weights
# ('answer') or with the file's own `theta_answer` there ('split'). Files say it in `info`.
POSITIONS = ("last", "answer", "split")
# The shift form's weight range: a head moves by `SHIFT_RANGE * sigmoid(theta) * (mu - base)`, so
# theta 0 (a fit's start) adds the whole difference of its ICL and zero-shot means, and at most twice it.
SHIFT_RANGE = 2.0


def blend_weights(logits, base=None) -> np.ndarray:
    """Float64 head weights of blend `logits`: `sigmoid(theta)`, times `SHIFT_RANGE` in the shift
    form (a vector with zero-shot means `base`)."""
    return (1.0 if base is None else SHIFT_RANGE) / (1 + np.exp(-np.asarray(logits, np.float64)))


def array_shapes(kind: str, model: dict, split: bool = False, shift: bool = False) -> dict[str, tuple[int, ...]]:
    """The arrays a file of `kind` holds for a model of shape `model` (`split`: a head blend
    with `theta_answer`; `shift`: with `base`), with their shapes."""
    L, N, H, D = (model[k] for k in ("n_layers", "n_heads", "head_dim", "d_model"))
    return {"head_blend": {"theta": (L, N), "mu": (L, N, H)} | ({"theta_answer": (L, N)} if split else {})
            | ({"base": (L, N, H)} if shift else {}),
            "residual_edit": {"add": (L, D), "target": (L, D), "weight": (L,)}}[kind]


class TaskVectorError(ValueError):
    """An intervention file that is unreadable, of another format, or made for another model."""


class TaskVector(NamedTuple):
    """A `head_blend` file: the soft task vector or a hard head set."""

    theta: np.ndarray  # [L, N] blend logits
    mu: np.ndarray  # [L, N, H] head means
    model: dict  # the model shape it was fitted on (SHAPE_KEYS)
    info: dict  # free-form metadata
    theta_answer: np.ndarray | None = None  # [L, N] logits at the answer tokens (positions 'split')
    base: np.ndarray | None = None  # [L, N, H] zero-shot head means (the shift form)
    kind = "head_blend"

    @property
    def positions(self) -> str:
        """Where it acts: 'last' (the last prompt token), 'answer' (that and every answer token)
        or 'split' (as 'answer', with `theta_answer` at the answer tokens)."""
        return positions_of(self.info)

    def logits(self) -> np.ndarray:
        """theta `[L, N]`, or `[2, L, N]` stacked with `theta_answer` (as `HeadBlend.logits`)."""
        return self.theta if self.theta_answer is None else np.stack([self.theta, self.theta_answer])

    def weights(self) -> np.ndarray:
        """Each head's weight, as `logits()` is shaped (see `blend_weights`)."""
        return blend_weights(self.logits(), self.base)

    def intervention(self):
        """As a `tvjax.HeadBlend` (imports JAX)."""
        from tvjax.interventions import HeadBlend

        return HeadBlend(self.theta, self.mu, self.theta_answer, self.base)

    def check(self, config) -> None:
        """Raise `TaskVectorError` naming both shapes if `config` (a ModelConfig) differs."""
        _check(self.model, config, self.kind)

    def save(self, path: str | os.PathLike) -> Path:
        """Write this task vector (arrays, model shape, info) to `path`."""
        return save_task_vector(path, self.theta, self.mu, SimpleNamespace(**self.model), self.theta_answer,
                                base=self.base, **self.info)


class ResidualVector(NamedTuple):
    """A `residual_edit` file: a function vector (`add` at one layer) or a layer patch
    (`target` with `weight` 1 at one layer); at the edited positions layer `l`'s output `x`
    becomes `(1 - weight[l]) * x + weight[l] * target[l] + add[l]`."""

    add: np.ndarray  # [L, D]
    target: np.ndarray  # [L, D]
    weight: np.ndarray  # [L]
    model: dict
    info: dict
    kind = "residual_edit"

    @property
    def positions(self) -> str:
        """Where it acts: 'last' (the last prompt token) or 'answer' (that and every answer token)."""
        return positions_of(self.info)

    def intervention(self):
        """As a `tvjax.ResidualEdit` (imports JAX)."""
        from tvjax.interventions import ResidualEdit

        return ResidualEdit(self.add, self.target, self.weight)

    def check(self, config) -> None:
        """Raise `TaskVectorError` naming both shapes if `config` (a ModelConfig) differs."""
        _check(self.model, config, self.kind)

    def save(self, path: str | os.PathLike) -> Path:
        """Write this residual edit (arrays, model shape, info) to `path`."""
        return save_residual_edit(path, self, SimpleNamespace(**self.model), **self.info)


def model_shape(config) -> dict:
    return {k: getattr(config, k) for k in SHAPE_KEYS}


def check_positions(positions: str) -> str:
    if positions not in POSITIONS:
        raise ValueError(f"positions={positions!r}: an intervention acts at {' or '.join(map(repr, POSITIONS))}")
    return positions


def positions_of(info: dict) -> str:
    """Where a file's intervention acts, from its `info` ('last' for files that do not say)."""
    try:
        return check_positions(info.get("positions", "last"))
    except ValueError as e:
        raise TaskVectorError(f"the file's info: {e}") from None


def save_task_vector(path: str | os.PathLike, theta, mu, config, theta_answer=None, *, base=None, **info) -> Path:
    """Write `theta` `[L, N]` and `mu` `[L, N, H]` (and `theta_answer` `[L, N]`, positions 'split';
    `base` `[L, N, H]`, the shift form) fitted on `config`'s model to `path` (atomically)."""
    arrays = {"theta": theta, "mu": mu} | ({} if theta_answer is None else {"theta_answer": theta_answer}) \
        | ({} if base is None else {"base": base})
    return _save(path, "head_blend", arrays, model_shape(config), info)


def save_residual_edit(path: str | os.PathLike, edit, config, **info) -> Path:
    """Write a `ResidualEdit` (or anything with `add`, `target`, `weight`) made on `config`'s model."""
    return _save(path, "residual_edit", {k: getattr(edit, k) for k in ("add", "target", "weight")},
                 model_shape(config), info)


def save_intervention(path: str | os.PathLike, intervention, config, **info) -> Path:
    """Write a `HeadBlend` or a `ResidualEdit` made on `config`'s model to `path`."""
    if all(hasattr(intervention, k) for k in ("theta", "mu")):
        return save_task_vector(path, intervention.theta, intervention.mu, config,
                                getattr(intervention, "theta_answer", None), base=getattr(intervention, "base", None),
                                **info)
    if all(hasattr(intervention, k) for k in ("add", "target", "weight")):
        return save_residual_edit(path, intervention, config, **info)
    raise TaskVectorError(f"cannot save an intervention of type {type(intervention).__name__}: the file format holds a HeadBlend "
                          f"(theta, mu) or a ResidualEdit (add, target, weight)")


def load_intervention(path: str | os.PathLike) -> TaskVector | ResidualVector:
    """Read an intervention file of either kind (`.kind` says which; `.intervention()` applies it)."""
    kind, arrays, model, info = _read(Path(path))
    if kind == "head_blend":
        return TaskVector(arrays["theta"], arrays["mu"], model, info, arrays.get("theta_answer"), arrays.get("base"))
    return ResidualVector(arrays["add"], arrays["target"], arrays["weight"], model, info)


def load_task_vector(path: str | os.PathLike) -> TaskVector:
    """Read a `head_blend` file (a soft task vector or a hard head set)."""
    loaded = load_intervention(path)
    if not isinstance(loaded, TaskVector):
        raise TaskVectorError(f"{path} holds a {loaded.kind} (a function vector or a layer patch), not a task "
                              f"vector; read it with tvjax.load_intervention")
    return loaded


def _save(path, kind: str, arrays: dict, model: dict, info: dict) -> Path:
    path = Path(path)
    arrays = {k: np.asarray(v, np.float32) for k, v in arrays.items()}
    check_split(path, info, arrays)
    want = array_shapes(kind, model, "theta_answer" in arrays, "base" in arrays)
    if {k: v.shape for k, v in arrays.items()} != want:
        raise TaskVectorError(f"{kind} arrays {_shapes(arrays, want)} do not fit model {model}, which needs {want}")
    check_values(path, arrays)
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "kind": kind, "model": json.dumps(model),
                "info": json.dumps(info, default=str)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    save_file(arrays, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def _read(path: Path) -> tuple[str, dict, dict, dict]:
    """`(kind, arrays, model, info)` of an intervention file, every check passed."""
    if not path.is_file():
        raise TaskVectorError(f"no task-vector file at {path}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise TaskVectorError(f"{path} is not a readable task-vector file (truncated?): {e}") from e
    if metadata.get("format") != FORMAT:
        raise TaskVectorError(f"{path} is not a tvjax task vector (format {metadata.get('format')!r})")
    if int(metadata.get("format_version", 0)) > FORMAT_VERSION:
        raise TaskVectorError(f"{path} has format version {metadata['format_version']}; this tvjax reads up to "
                              f"{FORMAT_VERSION}: upgrade tvjax")
    kind = metadata.get("kind", "head_blend")
    if kind not in KINDS:
        raise TaskVectorError(f"{path}: unknown kind {kind!r}; kinds: {', '.join(KINDS)}")
    model, info = (_json_entry(path, metadata, key) for key in ("model", "info"))
    missing = [k for k in SHAPE_KEYS if k not in model]
    if missing:
        raise TaskVectorError(f"{path}: the model metadata lacks {', '.join(missing)} (it has {sorted(model)}); "
                              f"write the file with tvjax.save_intervention")
    want = array_shapes(kind, model, *(kind == "head_blend" and name in arrays for name in ("theta_answer", "base")))
    if {k: v.shape for k, v in arrays.items()} != want:
        raise TaskVectorError(f"{path}: {kind} arrays {_shapes(arrays, want)} disagree with the model metadata {model}, "
                              f"which needs {_shapes(want, want)}")
    check_values(path, arrays)
    check_split(path, info, arrays)
    return kind, arrays, model, info


def check_split(path, info: dict, arrays: dict) -> None:
    """A vector with positions 'split' holds `theta_answer`, and only such a vector does."""
    split = info.get("positions") == "split"
    if split != ("theta_answer" in arrays):
        raise TaskVectorError(f"{path}: positions {info.get('positions', 'last')!r} " +
                              ("needs the answer-token logits theta_answer" if split else
                               "with theta_answer (answer-token logits): only positions 'split' has them"))


def check_values(path, arrays: dict[str, np.ndarray]) -> None:
    """Refuse NaN anywhere and infinite values, except in theta, which may be +-inf (a hard head
    set: exactly the mean or exactly the head)."""
    for name, array in arrays.items():
        bad = np.isnan(array) if name in INFINITE_ALLOWED else ~np.isfinite(array)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise TaskVectorError(f"{path}: {name} has {int(bad.sum())} "
                                  f"{'NaN' if name in INFINITE_ALLOWED else 'non-finite'} value(s), the first at "
                                  f"{where}; an intervention needs finite values (theta may be +-inf) and no NaN")


def _check(model: dict, config, kind: str) -> None:
    want = model_shape(config)
    if model != want:
        raise TaskVectorError(f"{kind} made for model {model} cannot be applied to model {want}")


def _shapes(arrays: dict, want: dict) -> str:
    """`theta (2, 3), mu (2, 3, 4)`: the arrays in `want`'s order (the kind's), then any others."""
    names = [k for k in want if k in arrays] + sorted(set(arrays) - set(want))
    return ", ".join(f"{k} {tuple(getattr(arrays[k], 'shape', arrays[k]))}" for k in names)


def _json_entry(path: Path, metadata: dict, key: str) -> dict:
    """The metadata entry `key`, parsed as a JSON object."""
    if key not in metadata:
        raise TaskVectorError(f"{path}: the metadata lacks {key!r} (it has {sorted(metadata)}); "
                              f"write the file with tvjax.save_intervention")
    try:
        value = json.loads(metadata[key])
    except json.JSONDecodeError as e:
        raise TaskVectorError(f"{path}: the metadata entry {key!r} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise TaskVectorError(f"{path}: the metadata entry {key!r} must be a JSON object, got {value!r}")
    return value
