"""ICL layer patching (Hendel et al. 2023): an ICL prompt's last-token state patched into a zero-shot one.

The state is the residual stream leaving layer `l` (the layer's output) at the last
token, averaged over ICL prompts of the task (`tvjax.extract.site_means(..., ("resid",))`).
At the last token of a zero-shot prompt it replaces the model's own state at that layer
(`ResidualEdit.patching`); the layer is the one with the lowest validation loss.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from tvjax.data import Task, Template, prompts_for
from tvjax.interventions import ResidualEdit, check_layer
from tvjax.rows import prepare_rows
from tvjax.scoring import best_layer


class LayerPatch(NamedTuple):
    edit: ResidualEdit  # the state patched in at `layer`
    layer: int
    layer_losses: np.ndarray  # [len(layers)] mean validation loss of the first answer token per candidate layer


def layer_patch(model, task: Task, states, *, layers: Sequence[int] | None = None, batch_size: int = 8,
                seed: int = 0, template: Template = Template()) -> LayerPatch:
    """Choose the layer (among `layers`, default all) where patching `states[l]` `[L, D]` works best on valid."""
    config, _, tokenizer = model
    layers = list(range(config.n_layers) if layers is None else layers)
    for layer in layers:
        check_layer(config, layer)
    states = np.asarray(states, np.float32)
    if states.shape != (config.n_layers, config.d_model):
        raise ValueError(f"states must be [L, D] = {(config.n_layers, config.d_model)}, got {states.shape}")
    valid, _ = prompts_for(tokenizer, task, "valid", 0, template=template, seed=seed)
    patch = lambda l: ResidualEdit.patching(config, l, states[l])
    layer, losses = best_layer(model, prepare_rows(model, valid), patch, layers, batch_size)
    return LayerPatch(patch(layer), layer, losses)
