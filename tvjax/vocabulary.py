"""The words an intervention is described by, shared by tvjax, its files and the PyTorch port
(no JAX, no PyTorch).

Where an intervention acts (`Positions`):
  'last'    the last prompt token only;
  'answer'  that and every answer token after it (each generated token; in fitting, each
            teacher-forced answer token), with the same weights;
  'split'   as 'answer', with weights of its own at the answer tokens (a head blend's
            `theta_answer`).

How a soft task vector moves a head (`Form`), implied by whether it has zero-shot means `base`:
  'blend'   `o + sigmoid(theta) * (mu - o)`, toward its task mean;
  'shift'   `o + SHIFT_RANGE * sigmoid(theta) * (mu - base)`, by its ICL minus zero-shot mean.
"""

from __future__ import annotations

import typing
from typing import Literal

import numpy as np

Positions = Literal["last", "answer", "split"]
Form = Literal["blend", "shift"]
POSITIONS: tuple[str, ...] = typing.get_args(Positions)
FORMS: tuple[str, ...] = typing.get_args(Form)
# The shift form's weight range: a head moves by `SHIFT_RANGE * sigmoid(theta) * (mu - base)`, so
# theta 0 (a fit's start) adds the whole difference of its ICL and zero-shot means, and at most twice it.
SHIFT_RANGE = 2.0
SHAPE_KEYS = ("family", "n_layers", "n_heads", "head_dim", "d_model")  # a model's shape, as files record it


def check_positions(positions: str, allowed: tuple[str, ...] = POSITIONS) -> str:
    """`positions` itself, or a ValueError naming the `allowed` ones."""
    if positions not in allowed:
        raise ValueError(f"positions={positions!r}: an intervention acts at {' or '.join(map(repr, allowed))}")
    return positions


def check_form(form: str) -> str:
    """`form` itself, or a ValueError naming the forms."""
    if form not in FORMS:
        raise ValueError(f"form={form!r}: a soft task vector's form is {' or '.join(map(repr, FORMS))}")
    return form


def blend_weights(logits, base=None) -> np.ndarray:
    """Float64 head weights of blend `logits`: `sigmoid(theta)`, times `SHIFT_RANGE` in the shift
    form (a vector with zero-shot means `base`)."""
    return (1.0 if base is None else SHIFT_RANGE) / (1 + np.exp(-np.asarray(logits, np.float64)))


def model_shape(config) -> dict:
    """`{family, n_layers, n_heads, head_dim, d_model}` of a `ModelConfig` (or anything with those fields)."""
    return {k: getattr(config, k) for k in SHAPE_KEYS}
