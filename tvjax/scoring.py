"""Choose among many interventions at once on cached-prefix rows (`tvjax.rows`).

Interventions stacked along a leading `C` axis (one per head, per layer, ...) are scored
by `tvjax.rows.stacked_row_losses`: `batch_size` of them share one vmapped forward of
every row's edited token on top of the rows' cached prefixes.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tvjax.interventions import Intervention
from tvjax.rows import Rows, stacked_row_losses


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
