"""Score many interventions at once on cached-prefix rows (`tvjax.fit.Rows`).

Interventions stacked along a leading `C` axis (one per head, per layer, per sampled
head mask, ...) go through `jax.lax.map` with `batch_size`: that many share one
vmapped forward of every row's edited token on top of the rows' cached prefixes.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tvjax.config import ModelConfig
from tvjax.fit import Rows, row_losses
from tvjax.interventions import Intervention


def stacked_row_losses(params, stacked, rows: Rows, *, config: ModelConfig, batch_size: int) -> jax.Array:
    """`[C, R]`: `row_losses` (answer cross-entropy per row) under each of the `C` stacked interventions.

    Args:
      stacked: an intervention (or tuple of them) whose every leaf has a leading `C` axis.
      rows: `R` cached-prefix rows (`tvjax.fit.prepare_rows`).
      batch_size: interventions per vmapped forward (at most `C`).
    """
    C = jax.tree.leaves(stacked)[0].shape[0]
    return _stacked_row_losses(params, stacked, rows, config=config, batch_size=min(batch_size, C))


@functools.partial(jax.jit, static_argnames=("config", "batch_size"))
def _stacked_row_losses(params, stacked, rows: Rows, *, config: ModelConfig, batch_size: int) -> jax.Array:
    C = jax.tree.leaves(stacked)[0].shape[0]
    pad = -C % batch_size  # padded with copies of the first, so the model is traced once
    stacked = jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)]), stacked)
    losses = jax.lax.map(lambda one: row_losses(params, config, one, rows), stacked, batch_size=batch_size)
    return losses[:C]


def stack(interventions: Sequence[Intervention]) -> Intervention:
    """`C` interventions of one structure -> one with a leading `C` axis on every leaf."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *interventions)


def best_layer(model, rows: Rows, edit_at: Callable[[int], Intervention], layers: Sequence[int],
               batch_size: int = 8) -> tuple[int, np.ndarray]:
    """The layer whose intervention `edit_at(layer)` has the lowest mean loss on `rows`.

    Returns:
      `(layer, losses)`, losses `[len(layers)]` the mean answer cross-entropy per layer.
    """
    config, params, _ = model
    if not layers:
        raise ValueError("no layers to choose from")
    losses = stacked_row_losses(params, stack([edit_at(layer) for layer in layers]), rows, config=config,
                                batch_size=batch_size)
    losses = np.asarray(losses.mean(axis=1))
    return int(layers[int(np.argmin(losses))]), losses
