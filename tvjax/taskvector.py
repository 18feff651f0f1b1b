"""Intervention files: safetensors arrays plus JSON metadata, readable without JAX.

One `.safetensors` file holds one intervention, of a registered kind (`KINDS`, `register_kind`):

- `head_blend` (the soft task vector, and REINFORCE's hard head sets): `theta` `[L, N]`
  (blend logits; `+inf` replaces a head by its mean exactly) and `mu` `[L, N, H]` (head means),
  plus `theta_answer` `[L, N]` in a vector with positions 'split' (the logits at the answer
  tokens) and `base` `[L, N, H]` in one of the shift form (the zero-shot head means: a head
  moves by `2 * sigmoid(theta) * (mu - base)`, see `tvjax.HeadBlend`);
- `residual_edit` (function vectors, ICL layer patches): `add` `[L, D]`, `target` `[L, D]`
  and `weight` `[L]`, the arrays of `tvjax.ResidualEdit`;
- a kind of your own: `register_kind(Kind(...))` names its arrays, its JAX intervention and its
  PyTorch hook; it is then saved, loaded, evaluated (`tvjax eval --intervention`) and applied
  from PyTorch as the built-in ones are.

All float32. The header metadata holds `format`, `format_version`, `kind`, `positions` (where
it acts, `tvjax.vocabulary.Positions`), the model's shape (`family`, `n_layers`, `n_heads`,
`head_dim`, `d_model`) and free-form JSON `info` (model name, task, method, hyperparameters,
scores, tvjax version). Version 1 files (no `kind`) are head blends; versions 1 and 2 record
`positions` in `info` (or not at all: 'last').
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from tvjax.files import replacing
from tvjax.vocabulary import POSITIONS, SHAPE_KEYS, SHIFT_RANGE, blend_weights, check_positions, model_shape

__all__ = ["FORMAT", "FORMAT_VERSION", "KINDS", "Kind", "register_kind", "kind_of", "resolve", "InterventionFile",
           "TaskVector", "ResidualVector", "TaskVectorError", "load_intervention", "load_task_vector", "save_intervention",
           "save_task_vector", "model_shape", "blend_weights", "SHIFT_RANGE", "SHAPE_KEYS"]

FORMAT = "tvjax-task-vector"
FORMAT_VERSION = 3


class TaskVectorError(ValueError):
    """An intervention file that is unreadable, of another format, or made for another model."""


class InterventionFile(NamedTuple):
    """A loaded intervention file of any kind: its arrays (also as attributes: `.theta`; an
    optional array the file lacks is None), the model shape it was made on, `info`, and where
    it acts."""

    kind: str
    arrays: dict  # name -> float32 np.ndarray
    model: dict  # the model shape it was made on (SHAPE_KEYS)
    info: dict  # free-form metadata
    positions: str = "last"  # where it acts (tvjax.vocabulary.Positions)

    def __getattr__(self, name: str):
        if name in KINDS.get(self.kind, _NO_KIND).shapes(self.model):
            return self.arrays.get(name)
        raise AttributeError(f"a {self.kind} file has no {name!r}")

    def intervention(self):
        """As its JAX intervention (imports JAX): the kind's class built from the arrays and `positions`."""
        return resolve(KINDS[self.kind].intervention)(**self.arrays, positions=self.positions)

    def check(self, config, model_name: str | None = None) -> None:
        """Raise `TaskVectorError` if `config` (a ModelConfig) has another shape, naming both models
        (the file's by the name its `info` records, `config`'s by `model_name`) and their differences."""
        want = model_shape(config)
        if self.model != want:
            named = lambda name, shape: f"model {name!r}" if name else f"a {shape['family']} model"
            differ = ", ".join(f"{k} {self.model[k]} vs {want[k]}" for k in SHAPE_KEYS if self.model[k] != want[k])
            raise TaskVectorError(f"{self.kind} made for {named(self.info.get('model'), self.model)} cannot be "
                                  f"applied to {named(model_name, want)}: {differ}")

    def save(self, path: str | os.PathLike) -> Path:
        """Write it (arrays, model shape, positions, info) to `path`."""
        return _save(path, self.kind, self.arrays, self.model, self.info, self.positions)


class TaskVector(InterventionFile):
    """A `head_blend` file: the soft task vector or a hard head set (`theta`, `mu`, and
    `theta_answer`, `base` or None)."""

    def logits(self) -> np.ndarray:
        """theta `[L, N]`, or `[2, L, N]` stacked with `theta_answer` (as `HeadBlend.logits`)."""
        return self.theta if self.theta_answer is None else np.stack([self.theta, self.theta_answer])

    def weights(self) -> np.ndarray:
        """Each head's weight, as `logits()` is shaped (see `blend_weights`)."""
        return blend_weights(self.logits(), self.base)


class ResidualVector(InterventionFile):
    """A `residual_edit` file: a function vector (`add` at one layer) or a layer patch
    (`target` with `weight` 1 at one layer); at the edited positions layer `l`'s output `x`
    becomes `(1 - weight[l]) * x + weight[l] * target[l] + add[l]`."""


@dataclasses.dataclass(frozen=True)
class Kind:
    """One kind of intervention: everything tvjax needs to save, load and apply it, in JAX and PyTorch.
    Its strength needs nothing here: `tvjax.scaled` and `apply_intervention(..., scale=)` scale any kind.

    Attributes:
      name: the file's `kind`.
      shapes: model shape (`SHAPE_KEYS` dict) -> `{array name: shape}` of every array it may hold.
      intervention: its JAX class, or `'module:Name'` (imported when first needed); built as
        `cls(**arrays, positions=positions)`, and its instances' fields of those names are saved.
      torch_hook: `(hf_model, file) -> tvjax.torch_port.Intervention` that applies a loaded file to
        a transformers model, or `'module:name'` of it.
      optional: arrays a file may lack (None in the intervention).
      positions: where it may act.
      infinite: arrays that may hold +-inf (never NaN).
      file: the class loaded files get (`InterventionFile` or a subclass with methods of its own).
      check: optional `(arrays, positions) -> error message or None`, more than shapes.
    """

    name: str
    shapes: Callable[[dict], dict[str, tuple[int, ...]]]
    intervention: type | str
    torch_hook: Callable | str
    optional: tuple[str, ...] = ()
    positions: tuple[str, ...] = ("last", "answer")
    infinite: tuple[str, ...] = ()
    file: type = InterventionFile
    check: Callable[[dict, str], str | None] | None = None


KINDS: dict[str, Kind] = {}
_NO_KIND = Kind("", lambda model: {}, "", "")


def register_kind(kind: Kind) -> Kind:
    """Add (or replace) an intervention kind; returns it."""
    KINDS[kind.name] = kind
    return kind


def kind_of(intervention) -> Kind:
    """The registered kind whose JAX class `intervention` is an instance of."""
    name = f"{type(intervention).__module__}:{type(intervention).__qualname__}"
    for kind in KINDS.values():  # by class, or by the class's name (a module imported anew)
        ref = kind.intervention
        if (f"{ref.__module__}:{ref.__qualname__}" if isinstance(ref, type) else ref) == name:
            return kind
    raise TaskVectorError(f"cannot save an intervention of type {type(intervention).__name__}: the file format holds "
                          f"the registered kinds ({', '.join(KINDS)}); add yours with tvjax.taskvector.register_kind")


def resolve(ref):
    """A `'module:name'` reference's object (imported), or `ref` itself."""
    if not isinstance(ref, str):
        return ref
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def _check_split(arrays: dict, positions: str) -> str | None:
    """A head blend with positions 'split' holds `theta_answer`, and only such a blend does."""
    if (positions == "split") != ("theta_answer" in arrays):
        return f"positions {positions!r} " + ("needs the answer-token logits theta_answer" if positions == "split"
                                              else "with theta_answer (answer-token logits): only positions 'split' "
                                                   "has them")
    return None


def _head_blend_shapes(model: dict) -> dict:
    L, N, H = model["n_layers"], model["n_heads"], model["head_dim"]
    return {"theta": (L, N), "mu": (L, N, H), "theta_answer": (L, N), "base": (L, N, H)}


def _residual_shapes(model: dict) -> dict:
    L, D = model["n_layers"], model["d_model"]
    return {"add": (L, D), "target": (L, D), "weight": (L,)}


register_kind(Kind("head_blend", _head_blend_shapes, "tvjax.interventions:HeadBlend", "tvjax.torch_port:head_blend_hook",
                   optional=("theta_answer", "base"), positions=POSITIONS, infinite=("theta", "theta_answer"),
                   file=TaskVector, check=_check_split))
register_kind(Kind("residual_edit", _residual_shapes, "tvjax.interventions:ResidualEdit",
                   "tvjax.torch_port:residual_hook", file=ResidualVector))


def save_task_vector(path: str | os.PathLike, theta, mu, config, theta_answer=None, *, base=None,
                     positions: str = "last", **info) -> Path:
    """Write `theta` `[L, N]` and `mu` `[L, N, H]` (and `theta_answer` `[L, N]`, positions 'split';
    `base` `[L, N, H]`, the shift form) fitted on `config`'s model to `path` (atomically)."""
    arrays = {"theta": theta, "mu": mu, "theta_answer": theta_answer, "base": base}
    return _save(path, "head_blend", {k: v for k, v in arrays.items() if v is not None}, model_shape(config), info,
                 positions)


def save_intervention(path: str | os.PathLike, intervention, config, **info) -> Path:
    """Write an intervention of a registered kind (`HeadBlend`, `ResidualEdit`, yours) made on
    `config`'s model to `path`: its arrays, where it acts (its `positions`) and `info`."""
    kind = kind_of(intervention)
    arrays = {k: getattr(intervention, k, None) for k in kind.shapes(model_shape(config))}
    return _save(path, kind.name, {k: v for k, v in arrays.items() if v is not None}, model_shape(config), info,
                 getattr(intervention, "positions", "last"))


def load_intervention(path: str | os.PathLike) -> InterventionFile:
    """Read an intervention file of any registered kind (`.kind` says which; `.intervention()` applies it)."""
    kind, arrays, model, info, positions = _read(Path(path))
    return KINDS[kind].file(kind, arrays, model, info, positions)


def load_task_vector(path: str | os.PathLike) -> TaskVector:
    """Read a `head_blend` file (a soft task vector or a hard head set)."""
    loaded = load_intervention(path)
    if not isinstance(loaded, TaskVector):
        raise TaskVectorError(f"{path} holds a {loaded.kind} (e.g. a function vector or a layer patch), not a task "
                              f"vector; read it with tvjax.load_intervention")
    return loaded


def _save(path, kind: str, arrays: dict, model: dict, info: dict, positions: str) -> Path:
    path = Path(path)
    arrays = {k: np.asarray(v, np.float32) for k, v in arrays.items()}
    _check_contents(path, KINDS[kind], arrays, model, positions, "do not fit model")
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "kind": kind, "positions": positions,
                "model": json.dumps(model), "info": json.dumps(info, default=str)}
    with replacing(path) as tmp:
        save_file(arrays, str(tmp), metadata=metadata)
    return path


def _read(path: Path) -> tuple[str, dict, dict, dict, str]:
    """`(kind, arrays, model, info, positions)` of an intervention file, every check passed."""
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
    version = int(metadata.get("format_version", 0))
    if version > FORMAT_VERSION:
        raise TaskVectorError(f"{path} has format version {metadata['format_version']}; this tvjax reads up to "
                              f"{FORMAT_VERSION}: upgrade tvjax")
    kind = metadata.get("kind", "head_blend")
    if kind not in KINDS:
        raise TaskVectorError(f"{path}: unknown kind {kind!r}; kinds: {', '.join(KINDS)} (a kind of your own: "
                              f"tvjax.taskvector.register_kind before loading)")
    model, info = (_json_entry(path, metadata, key) for key in ("model", "info"))
    missing = [k for k in SHAPE_KEYS if k not in model]
    if missing:
        raise TaskVectorError(f"{path}: the model metadata lacks {', '.join(missing)} (it has {sorted(model)}); "
                              f"write the file with tvjax.save_intervention")
    positions = metadata.get("positions", "last") if version >= 3 else info.get("positions", "last")
    other = sorted(f"{k} {a.dtype}" for k, a in arrays.items() if a.dtype != np.float32)
    if other:
        raise TaskVectorError(f"{path}: every array of the format is float32, not {', '.join(other)}")
    _check_contents(path, KINDS[kind], arrays, model, positions, "disagree with the model metadata")
    return kind, arrays, model, info, positions


def _check_contents(path, kind: Kind, arrays: dict, model: dict, positions: str, mismatch: str) -> None:
    """Where it acts, the arrays' names and shapes, and their values, as `kind` needs them."""
    try:
        check_positions(positions, kind.positions)
    except ValueError as e:
        raise TaskVectorError(f"{path}: {kind.name}: {e}") from None
    problem = kind.check(arrays, positions) if kind.check else None
    if problem:
        raise TaskVectorError(f"{path}: {problem}")
    shapes = kind.shapes(model)
    want = {k: v for k, v in shapes.items() if k in arrays or k not in kind.optional}
    if {k: v.shape for k, v in arrays.items()} != want:
        raise TaskVectorError(f"{path}: {kind.name} arrays {_shapes(arrays, want)} {mismatch} {model}, "
                              f"which needs {_shapes(want, want)}")
    for name, array in arrays.items():
        infinite = name in kind.infinite
        bad = np.isnan(array) if infinite else ~np.isfinite(array)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise TaskVectorError(f"{path}: {name} has {int(bad.sum())} {'NaN' if infinite else 'non-finite'} "
                                  f"value(s), the first at {where}; an intervention needs finite values (theta may "
                                  f"be +-inf) and no NaN")


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
