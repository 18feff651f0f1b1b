"""The capture/edit API: named sites against PyTorch, user edits against built-in interventions, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import tvjax
from tvjax.interventions import SITES, Edit, HeadBlend, ResidualEdit

RNG = np.random.default_rng(3)


def _tokens(config, B=2, T=9):
    return jnp.asarray(RNG.integers(3, config.vocab_size, size=(B, T)))


def _torch_outputs(hf, tokens, modules: str):
    """Outputs `[L][B, T, D]` of each Llama layer's `modules` ('self_attn' or 'mlp') and the hidden states."""
    saved, handles = [], []
    for layer in hf.model.layers:
        module = getattr(layer, modules)
        handles.append(module.register_forward_hook(lambda m, i, out: saved.append(out[0] if isinstance(out, tuple)
                                                                                   else out)))
    with torch.no_grad():
        hidden = hf(torch.as_tensor(np.asarray(tokens)), output_hidden_states=True).hidden_states
    for h in handles:
        h.remove()
    return [s.numpy() for s in saved], [h.numpy() for h in hidden]


def test_every_site_matches_pytorch_at_every_position(tiny_models):
    hf, (config, params, _), _ = tiny_models("llama")
    tokens = _tokens(config)
    out = tvjax.forward(params, tokens, config=config, capture=SITES)
    B, T = tokens.shape
    L, N, H, D = config.n_layers, config.n_heads, config.head_dim, config.d_model
    assert {s: v.shape for s, v in out.captured.items()} == {
        "heads": (B, L, T, N, H), "attn": (B, L, T, D), "mlp": (B, L, T, D), "resid": (B, L, T, D)}
    attn, hidden = _torch_outputs(hf, tokens, "self_attn")
    mlp, _ = _torch_outputs(hf, tokens, "mlp")
    for l in range(L):
        np.testing.assert_allclose(out.captured["attn"][:, l], attn[l], atol=1e-5)
        np.testing.assert_allclose(out.captured["mlp"][:, l], mlp[l], atol=1e-5)
        if l < L - 1:  # transformers' last hidden state is after the final norm
            np.testing.assert_allclose(out.captured["resid"][:, l], hidden[l + 1], atol=1e-5)
    heads = tvjax.forward(params, tokens, config=config, capture_at=jnp.array([3, 8])).heads
    np.testing.assert_allclose(out.captured["heads"][np.arange(2), :, [3, 8]], heads, atol=1e-6)


def test_parallel_residual_is_the_sum_of_its_parts_and_matches_hidden_states(tiny_models):
    hf, (config, params, _), _ = tiny_models("gpt_neox")
    tokens = _tokens(config)
    at = jnp.array([8, 5])
    c = tvjax.forward(params, tokens, config=config, capture=("attn", "mlp", "resid"), capture_at=at).captured
    with torch.no_grad():
        hidden = hf(torch.as_tensor(np.asarray(tokens)), output_hidden_states=True).hidden_states
    rows = np.arange(2)
    for l in range(config.n_layers - 1):
        np.testing.assert_allclose(c["resid"][:, l], hidden[l + 1].numpy()[rows, at], atol=1e-5)
    np.testing.assert_allclose(c["resid"][:, 1:], c["resid"][:, :-1] + c["attn"][:, 1:] + c["mlp"][:, 1:], atol=1e-5)


def test_no_capture_by_default_and_identity_edit_is_the_plain_model(tiny_models):
    _, (config, params, _), _ = tiny_models("llama")
    tokens = _tokens(config)
    plain = tvjax.forward(params, tokens, config=config)
    assert plain.captured is None and plain.heads is None
    same = Edit("resid", lambda x, layer, data: x)
    np.testing.assert_array_equal(tvjax.forward(params, tokens, config=config, intervention=same).logits, plain.logits)


def _zero_head(x, layer, data):
    """Zero the head `data` `[2]` (layer, head) selects, in that layer."""
    return jnp.where(layer == data[0], x.at[..., data[1], :].set(0), x)


def test_edit_on_heads_equals_hard_replacement_by_zero(tiny_models):
    _, (config, params, _), _ = tiny_models("llama")
    tokens = _tokens(config)
    L, N = config.n_layers, config.n_heads
    edit = Edit("heads", _zero_head, jnp.tile(jnp.array([1, 2]), (L, 1)))  # data [L, 2]
    selected = np.zeros((L, N), bool)
    selected[1, 2] = True
    hard = HeadBlend.hard(selected, np.zeros((L, N, config.head_dim), np.float32))
    ours = tvjax.forward(params, tokens, config=config, intervention=edit, capture="heads").captured["heads"]
    ref = tvjax.forward(params, tokens, config=config, intervention=hard, capture="heads").captured["heads"]
    np.testing.assert_array_equal(ours, ref)
    assert np.all(ours[:, 1, -1, 2] == 0) and np.any(ours[:, 1, :-1, 2] != 0)  # only the last position


def test_edits_compose_in_order_and_are_read_after_editing(tiny_models):
    _, (config, params, _), _ = tiny_models("llama")
    tokens = _tokens(config)
    zero = Edit("mlp", lambda x, layer, data: x * data[..., None, None], jnp.array([1.0, 0.0, 1.0]))
    double = Edit("attn", lambda x, layer, data: 2 * x)
    plain = tvjax.forward(params, tokens, config=config, capture=("attn", "mlp")).captured
    out = tvjax.forward(params, tokens, config=config, intervention=(zero, double), capture=("attn", "mlp")).captured
    np.testing.assert_array_equal(out["mlp"][:, 1, -1], 0)
    np.testing.assert_allclose(out["attn"][:, 0, -1], 2 * plain["attn"][:, 0, -1], rtol=1e-6)
    for site in ("attn", "mlp"):  # only the last position is edited
        np.testing.assert_array_equal(out[site][:, :, :-1], plain[site][:, :, :-1])


def test_edit_data_is_differentiable_under_jit(tiny_models):
    _, (config, params, _), _ = tiny_models("llama")
    tokens = _tokens(config)
    add = lambda x, layer, data: x + data

    @jax.jit
    def loss(vectors):  # [L, D]
        logits = tvjax.forward(params, tokens, config=config, intervention=Edit("resid", add, vectors),
                               logits_at=jnp.full((2,), 8)).logits
        return jax.nn.logsumexp(logits, axis=-1).mean()

    vectors = jnp.zeros((config.n_layers, config.d_model))
    grad = jax.grad(loss)(vectors)
    assert grad.shape == vectors.shape and np.abs(grad).max() > 0


def test_bad_sites_and_interventions_are_clear_errors(tiny_models):
    _, (config, params, _), _ = tiny_models("llama")
    tokens = _tokens(config)
    with pytest.raises(ValueError, match="empty site name"):
        tvjax.forward(params, tokens, config=config, capture="")
    with pytest.raises(ValueError, match=r"unknown site 'residual'; sites: heads, attn, mlp, resid"):
        tvjax.forward(params, tokens, config=config, capture=("heads", "residual"))
    with pytest.raises(ValueError, match="unknown site 'out'"):
        tvjax.forward(params, tokens, config=config, intervention=Edit("out", lambda x, l, d: x))
    with pytest.raises(ValueError, match="leading L = 3 axis"):
        tvjax.forward(params, tokens, config=config, intervention=Edit("resid", lambda x, l, d: x, jnp.zeros((2, 4))))
    with pytest.raises(ValueError, match="expected an intervention"):
        tvjax.forward(params, tokens, config=config, intervention={"theta": 0})
    with pytest.raises(ValueError, match="ResidualEdit does not fit this model"):
        tvjax.forward(params, tokens, config=config, intervention=ResidualEdit(jnp.zeros((3, 5)), jnp.zeros((3, 5)),
                                                                         jnp.zeros(3)))
