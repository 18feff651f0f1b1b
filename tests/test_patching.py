"""ICL layer patching: the edit replaces one position at one layer, and the layer is the best on valid."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import tvjax
from tvjax.extract import mean_prompts, site_means
from tvjax.rows import mean_loss, prepare_rows
from tvjax.interventions import ResidualEdit
from tvjax.patching import layer_patch
from conftest import assert_logits_close
from test_function_vectors import hooked_logits

RNG = np.random.default_rng(7)


def test_patching_replaces_exactly_one_position_at_one_layer(tiny_models):
    hf, (config, params, _), _ = tiny_models("llama")
    tokens = jnp.asarray(RNG.integers(3, config.vocab_size, size=(2, 9)))
    state = RNG.normal(size=config.d_model).astype(np.float32)
    layer = 1
    plain = tvjax.forward(params, tokens, config=config, capture="resid").captured["resid"]  # [B, L, T, D]
    out = tvjax.forward(params, tokens, config=config, intervention=ResidualEdit.patching(config, layer, state),
                        capture="resid")
    resid = out.captured["resid"]
    np.testing.assert_array_equal(resid[:, layer, -1], np.broadcast_to(state, (2, config.d_model)))
    np.testing.assert_array_equal(resid[:, :layer], plain[:, :layer])  # earlier layers
    np.testing.assert_array_equal(resid[:, :, :-1], plain[:, :, :-1])  # earlier positions
    assert np.all(np.abs(resid[:, layer + 1:, -1] - plain[:, layer + 1:, -1]).max(-1) > 1e-3)  # later layers see it
    assert_logits_close(out.logits, hooked_logits(hf, tokens, layer, lambda h: torch.as_tensor(state).expand_as(h)))


def test_site_means_average_the_last_token_of_each_prompt(tiny_lm, tiny_task):
    prompts = mean_prompts(tiny_lm.tokenizer, tiny_task, n_prompts=3, shots=3)
    means = site_means(tiny_lm, prompts, ("heads", "resid"), batch_size=2)  # the second batch padded
    singles = [tvjax.forward(tiny_lm.params, jnp.asarray([p.ids]), config=tiny_lm.config, capture=("heads", "resid"),
                             capture_at=jnp.asarray([len(p.ids) - 1])).captured for p in prompts]
    for site in ("heads", "resid"):
        np.testing.assert_allclose(means[site], np.mean([s[site][0] for s in singles], axis=0), atol=1e-5)


def test_layer_patch_picks_the_layer_with_the_lowest_valid_loss(tiny_lm, tiny_task):
    config = tiny_lm.config
    states = RNG.normal(size=(config.n_layers, config.d_model)).astype(np.float32)
    patch = layer_patch(tiny_lm, tiny_task, states)
    valid = prepare_rows(tiny_lm, tvjax.data.prompts_for(tiny_lm.tokenizer, tiny_task, "valid", 0)[0])
    one_at_a_time = [float(mean_loss(tiny_lm.params, ResidualEdit.patching(config, l, states[l]), valid, config=config))
                     for l in range(config.n_layers)]
    np.testing.assert_allclose(patch.layer_losses, one_at_a_time, rtol=1e-5)
    assert patch.layer == int(np.argmin(one_at_a_time))
    np.testing.assert_array_equal(patch.edit.target[patch.layer], states[patch.layer])
    np.testing.assert_array_equal(patch.edit.weight, np.eye(config.n_layers)[patch.layer])
    with pytest.raises(ValueError, match=r"states must be \[L, D\] = \(2, 64\), got \(2, 63\)"):
        layer_patch(tiny_lm, tiny_task, states[:, :-1])
    with pytest.raises(ValueError, match="layer -1 out of range"):
        layer_patch(tiny_lm, tiny_task, states, layers=[0, -1])
    with pytest.raises(ValueError, match="layer 2 out of range"):
        ResidualEdit.adding(config, 2, states[0])
