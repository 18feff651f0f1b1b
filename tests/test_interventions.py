"""HeadBlend inside the model: limits, a PyTorch hook reference, gradients, capture; a user's own
intervention class; any intervention at a strength (`scaled`)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import tvjax
from tvjax import HeadBlend
from tvjax.interventions import Scaled
from tvjax.torch_port import Intervention, SaveInputsHook, attention_outputs
from conftest import FAMILIES, assert_logits_close, torch_blend

RNG = np.random.default_rng(1)


def _setup(tiny_models, family, T=9):
    hf, (config, params, _), _ = tiny_models(family)
    tokens = RNG.integers(3, config.vocab_size, size=(2, T))
    mu = RNG.normal(size=(config.n_layers, config.n_heads, config.head_dim)).astype(np.float32)
    return hf, config, params, tokens, mu


def _hf_with_blend(hf, tokens, weight, mu, positions):
    with torch_blend(hf, weight, mu, positions), torch.no_grad():
        return hf(torch.as_tensor(tokens)).logits.numpy()


@pytest.mark.parametrize("family", FAMILIES)
def test_blend_matches_pytorch_hook_reference(tiny_models, family):
    hf, config, params, tokens, mu = _setup(tiny_models, family)
    theta = RNG.normal(size=(config.n_layers, config.n_heads)).astype(np.float32)
    edit = np.zeros(tokens.shape, bool)
    edit[0, 8], edit[1, 5] = True, True  # one edited position per row
    ours = tvjax.forward(params, jnp.asarray(tokens), config=config, intervention=HeadBlend(theta, mu),
                         edit_mask=jnp.asarray(edit)).logits
    weight = 1 / (1 + np.exp(-theta))
    assert_logits_close(ours, _hf_with_blend(hf, tokens, weight, mu, [8, 5]))


def test_theta_minus_inf_is_the_plain_model(tiny_models):
    _, config, params, tokens, mu = _setup(tiny_models, "llama")
    plain = tvjax.forward(params, jnp.asarray(tokens), config=config).logits
    off = HeadBlend(jnp.full((config.n_layers, config.n_heads), -jnp.inf), jnp.asarray(mu))
    off_logits = tvjax.forward(params, jnp.asarray(tokens), config=config, intervention=off).logits
    np.testing.assert_array_equal(off_logits, plain)


def test_theta_plus_inf_replaces_heads_with_mu(tiny_models):
    hf, config, params, tokens, mu = _setup(tiny_models, "gpt_neox")
    on = HeadBlend(jnp.full((config.n_layers, config.n_heads), jnp.inf), jnp.asarray(mu))
    ours = tvjax.forward(params, jnp.asarray(tokens), config=config, intervention=on).logits  # default: last position
    replaced = _hf_with_blend(hf, tokens, np.ones((config.n_layers, config.n_heads)), mu, [8, 8])
    assert_logits_close(ours, replaced)
    # Before the edited position nothing changes.
    plain = tvjax.forward(params, jnp.asarray(tokens), config=config).logits
    np.testing.assert_allclose(ours[:, :8], plain[:, :8], atol=1e-6)


def test_gradient_wrt_theta_matches_finite_differences(tiny_models):
    _, config, params, tokens, mu = _setup(tiny_models, "llama")
    target = jnp.asarray(tokens[:, 0])

    @jax.jit
    def loss(theta):
        logits = tvjax.forward(params, jnp.asarray(tokens), config=config,
                               intervention=HeadBlend(theta, jnp.asarray(mu)), logits_at=jnp.full((2,), 8)).logits
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), target[:, None], axis=1))

    theta = jnp.asarray(RNG.normal(size=(config.n_layers, config.n_heads)).astype(np.float32))
    grad = jax.jit(jax.grad(loss))(theta)
    assert np.abs(grad).max() > 1e-4
    eps = 1e-2
    for l, n in [(0, 0), (1, 3), (2, 1)]:
        step = jnp.zeros_like(theta).at[l, n].set(eps)
        numeric = (loss(theta + step) - loss(theta - step)) / (2 * eps)
        np.testing.assert_allclose(grad[l, n], numeric, rtol=2e-2, atol=1e-4)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_capture_returns_head_outputs_at_positions(tiny_models, family):
    hf, config, params, tokens, _ = _setup(tiny_models, family)
    at = np.array([8, 4])
    heads = tvjax.forward(params, jnp.asarray(tokens), config=config, capture_at=jnp.asarray(at)).heads
    assert heads.shape == (2, config.n_layers, config.n_heads, config.head_dim)
    with Intervention(attention_outputs(hf), SaveInputsHook()) as saved, torch.no_grad():
        hf(torch.as_tensor(tokens))
    for l, name in enumerate(attention_outputs(hf)):
        expected = saved[name][0].numpy()[np.arange(2), at].reshape(2, config.n_heads, config.head_dim)
        np.testing.assert_allclose(heads[:, l], expected, atol=1e-5)


def test_blend_of_wrong_shape_names_both_shapes(tiny_models):
    _, config, params, tokens, _ = _setup(tiny_models, "llama")
    bad = HeadBlend(jnp.zeros((config.n_layers, config.n_heads + 1)), jnp.zeros((2, 4, 16)))
    with pytest.raises(ValueError, match=r"got theta \(3, 5\), mu \(2, 4, 16\).*needs theta \(3, 4\), mu \(3, 4, 16\)"):
        tvjax.forward(params, jnp.asarray(tokens), config=config, intervention=bad)


class MixHeads(NamedTuple):
    """An intervention class of the user's own: heads mixed with `mu` `[L, N, H]` by weights `w` `[L, N]`
    directly (no sigmoid): `HeadBlend(logit(w), mu)` by another route."""

    w: jax.Array
    mu: jax.Array
    site = "heads"

    def check(self, config):
        if self.w.shape != (config.n_layers, config.n_heads):
            raise ValueError(f"MixHeads weights {self.w.shape} do not fit this model")

    def apply(self, heads, layer, edit_mask):
        w = self.w[None, None, :, None] * edit_mask[:, :, None, None]
        return heads + w * (self.mu - heads)

    def axes(self):
        return MixHeads(None, "LNH")


def test_a_user_intervention_class_works_in_forward_jit_grad_and_vmap(tiny_models):
    _, config, params, tokens, mu = _setup(tiny_models, "llama")
    tokens, mu = jnp.asarray(tokens), jnp.asarray(mu)
    theta = jnp.asarray(RNG.normal(size=(config.n_layers, config.n_heads)).astype(np.float32))

    @jax.jit
    def loss(intervention):
        logits = tvjax.forward(params, tokens, config=config, intervention=intervention, logits_at=jnp.full((2,), 8))
        return -jnp.mean(jax.nn.log_softmax(logits.logits)[:, 7])

    own, blend = MixHeads(jax.nn.sigmoid(theta), mu), HeadBlend(theta, mu)
    np.testing.assert_allclose(loss(own), loss(blend), rtol=1e-6)
    w = own.w  # d loss / d theta = d loss / d w * w (1 - w)
    np.testing.assert_allclose(jax.grad(loss)(own).w * w * (1 - w), jax.grad(loss)(blend).theta, rtol=1e-4, atol=1e-7)
    stacked = MixHeads(jnp.stack([w, 1 - w, w / 2]), jnp.stack([mu, -mu, mu]))  # a leading C = 3 axis
    batched = jax.vmap(loss)(stacked)
    np.testing.assert_allclose(batched, [loss(MixHeads(stacked.w[c], stacked.mu[c])) for c in range(3)], rtol=1e-6)
    with pytest.raises(ValueError, match="MixHeads weights"):
        loss(MixHeads(w[:1], mu))


def test_stacked_blends_apply_row_by_row_as_each_tasks_own(tiny_models):
    """One HeadBlend for many tasks: `stack` adds the task axis, `rows` gives each row its task's
    vector, and a row's logits are the ones its task's own blend gives it."""
    _, config, params, tokens, mu = _setup(tiny_models, "llama")
    shape = (config.n_layers, config.n_heads)
    blends = [HeadBlend(jnp.asarray(RNG.normal(size=shape), jnp.float32), jnp.asarray(mu) * (a + 1),
                        jnp.asarray(RNG.normal(size=shape), jnp.float32)) for a in range(3)]
    stacked = HeadBlend.stack(blends)
    assert stacked.theta.shape == (3, *shape) and stacked.positions == "split"
    task = np.array([2, 0])  # row 0 takes task 2's vector, row 1 task 0's
    rows = stacked.rows(task)
    assert rows.per_row and rows.theta.shape == (config.n_layers, 2, config.n_heads)
    edit = jnp.ones(tokens.shape, bool).at[:, :4].set(False)  # the last prompt token and the answer after it
    together = tvjax.forward(params, jnp.asarray(tokens), config=config, intervention=rows, edit_mask=edit).logits
    for row, a in enumerate(task):
        alone = tvjax.forward(params, jnp.asarray(tokens[row:row + 1]), config=config, intervention=blends[a],
                              edit_mask=edit[row:row + 1]).logits
        np.testing.assert_allclose(together[row], alone[0], rtol=1e-5, atol=1e-5)
    assert jax.tree.all(jax.tree.map(np.array_equal, stacked.task(1), HeadBlend.stack(blends[1:2]).task(0)))
    with pytest.raises(ValueError, match="one form and one positions"):
        HeadBlend.stack([blends[0], HeadBlend(blends[0].theta, mu)])


def _scaling_cases(config, s):
    """(name, intervention, what it is at strength `s`, written without `scaled`) for each built-in kind."""
    L, N, H, D = config.n_layers, config.n_heads, config.head_dim, config.d_model
    theta, theta_answer = (jnp.asarray(RNG.normal(size=(L, N)), jnp.float32) for _ in range(2))
    mu, base = (jnp.asarray(RNG.normal(size=(L, N, H)), jnp.float32) for _ in range(2))
    add, target = (jnp.asarray(RNG.normal(size=(L, D)), jnp.float32) for _ in range(2))
    weight = jnp.asarray([0.0, 0.7, 0.3][:L], jnp.float32)
    zero_head = lambda x, layer, _: x.at[..., 1, :].set(0)
    moved = base + s * (mu - base)  # the shift form's means at strength s
    return [
        ("blend", HeadBlend(theta, mu), MixHeads(s * jax.nn.sigmoid(theta), mu)),
        ("shift", HeadBlend(theta, mu, base=base), HeadBlend(theta, moved, base=base)),
        ("split", HeadBlend(theta, mu, theta_answer, base), HeadBlend(theta, moved, theta_answer, base)),
        ("residual", tvjax.ResidualEdit(add, target, weight), tvjax.ResidualEdit(s * add, target, s * weight)),
        ("edit", tvjax.Edit("heads", zero_head), tvjax.Edit("heads", lambda x, layer, _: x.at[..., 1, :].mul(1 - s))),
    ]


def test_scaled_interventions_move_a_site_scale_times_as_far(tiny_models):
    """`scaled(i, s)` of every kind is the edit `s` times as large; scale 1 is `i` itself, scale 0 the plain model."""
    _, config, params, tokens, _ = _setup(tiny_models, "llama")
    tokens = jnp.asarray(tokens)
    edit = jnp.zeros(tokens.shape, bool).at[:, 6:].set(True)  # a prompt's last token and two answer tokens
    run = lambda i: tvjax.forward(params, tokens, config=config, intervention=i, edit_mask=edit).logits
    plain = run(None)
    cases = _scaling_cases(config, 2.0)
    for name, intervention, expected in cases:
        assert tvjax.scaled(intervention, 1) is intervention, name
        ours = run(tvjax.scaled(intervention, 2))
        np.testing.assert_allclose(ours, run(expected), rtol=1e-5, atol=1e-5, err_msg=name)
        assert np.abs(ours - plain).max() > 1e-3, name
    every = tuple(intervention for _, intervention, _ in cases)
    assert tvjax.scaled(every, 0) == tuple(Scaled(i, 0.0) for i in every) and tvjax.scaled(None, 2) is None
    np.testing.assert_array_equal(run(tvjax.scaled(every, 0)), plain)
    with pytest.raises(ValueError, match="finite"):
        tvjax.scaled(every, float("nan"))


def test_scaled_interventions_work_under_jit_grad_and_vmap(tiny_models):
    _, config, params, tokens, mu = _setup(tiny_models, "llama")
    tokens, mu = jnp.asarray(tokens), jnp.asarray(mu)

    @jax.jit
    def loss(intervention):
        logits = tvjax.forward(params, tokens, config=config, intervention=intervention, logits_at=jnp.full((2,), 8))
        return -jnp.mean(jax.nn.log_softmax(logits.logits)[:, 7])

    add = jnp.asarray(RNG.normal(size=(config.n_layers, config.d_model)), jnp.float32)
    edit = lambda a: tvjax.ResidualEdit(a, jnp.zeros_like(a), jnp.zeros(config.n_layers))
    # x + 2 * add: the gradient of the scaled edit is twice the plain one's at 2 * add
    np.testing.assert_allclose(jax.grad(loss)(tvjax.scaled(edit(add), 2)).intervention.add,
                               2 * jax.grad(loss)(edit(2 * add)).add, rtol=1e-4, atol=1e-7)
    thetas = jnp.asarray(RNG.normal(size=(3, config.n_layers, config.n_heads)), jnp.float32)
    stacked = tvjax.scaled(HeadBlend(thetas, jnp.stack([mu, -mu, mu])), 0.5)  # a leading C = 3 axis
    np.testing.assert_allclose(jax.vmap(loss)(stacked),
                               [loss(tvjax.scaled(HeadBlend(thetas[c], stacked.intervention.mu[c]), 0.5))
                                for c in range(3)], rtol=1e-6)
