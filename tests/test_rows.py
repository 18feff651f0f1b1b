"""Prompt rows: cached prefixes give the full model's losses, batched or one at a time."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tvjax
from tvjax import HeadBlend
from tvjax.data import prompts_for
from tvjax.rows import prepare_rows, row_losses
from conftest import positional_blend


def test_cached_prefix_loss_equals_full_forward(tiny_lm, tiny_task):
    """The fitting shortcut (prefix KV cache, suffix only) gives the full model's answer likelihood."""
    prompts, _ = prompts_for(tiny_lm.tokenizer, tiny_task, "train", 0)
    prompts = prompts[:6]
    c = tiny_lm.config
    rng = np.random.default_rng(0)
    blend = HeadBlend(jnp.asarray(rng.normal(size=(c.n_layers, c.n_heads)), jnp.float32),
                      jnp.asarray(rng.normal(size=(c.n_layers, c.n_heads, c.head_dim)), jnp.float32))
    for all_tokens in (False, True):
        losses = row_losses(tiny_lm.params, c, blend, prepare_rows(tiny_lm, prompts, all_tokens))
        for p, loss in zip(prompts, losses):
            tokens = jnp.asarray([p.ids + p.answer[:-1]])
            edit = jnp.zeros(tokens.shape, bool).at[0, len(p.ids) - 1].set(True)
            logp = jax.nn.log_softmax(tvjax.forward(tiny_lm.params, tokens, config=c, intervention=blend,
                                                    edit_mask=edit).logits[0])
            answer = p.answer if all_tokens else p.answer[:1]
            expected = -np.mean([logp[len(p.ids) - 1 + i, t] for i, t in enumerate(answer)])
            np.testing.assert_allclose(loss, expected, rtol=1e-4, atol=1e-5)

def test_batched_rows_equal_one_at_a_time(tiny_lm, tiny_task):
    prompts, _ = prompts_for(tiny_lm.tokenizer, tiny_task, "train", 0)
    c = tiny_lm.config
    blend = HeadBlend(jnp.ones((c.n_layers, c.n_heads)), jnp.ones((c.n_layers, c.n_heads, c.head_dim)))
    batched = row_losses(tiny_lm.params, c, blend, prepare_rows(tiny_lm, prompts[:8], batch_size=8))
    singles = [row_losses(tiny_lm.params, c, blend, prepare_rows(tiny_lm, [p], batch_size=1))[0] for p in prompts[:8]]
    np.testing.assert_allclose(batched, singles, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("positions,form", [("answer", "blend"), ("split", "blend"), ("split", "shift")])
def test_answer_positions_loss_equals_full_forward_with_the_blend_on_every_answer_token(tiny_lm, tiny_task,
                                                                                        positions, form):
    """positions 'answer' / 'split': the cached-prefix rows edit the last prompt token and every
    teacher-forced answer token (with 'split', the answer tokens by their own `theta_answer`), with
    the loss on every answer token and the stop token after them (the template's line break), as
    a full forward with explicit per-position blend weights. With 'split' the loss leaves out
    the first answer token (theta's, fitted in the first stage). The shift form (`base`) moves
    the heads by `2 * sigmoid * (mu - base)` at the same positions."""
    prompts, _ = prompts_for(tiny_lm.tokenizer, tiny_task, "train", 0)
    prompts = prompts[:6]
    assert len({len(p.answer) for p in prompts}) > 1  # rows of different answer lengths share a batch
    c = tiny_lm.config
    rng = np.random.default_rng(1)
    theta, theta_answer = (jnp.asarray(rng.normal(size=(c.n_layers, c.n_heads)), jnp.float32) for _ in range(2))
    mu, base = (jnp.asarray(rng.normal(size=(c.n_layers, c.n_heads, c.head_dim)), jnp.float32) for _ in range(2))
    base = base if form == "shift" else None
    if positions == "answer":
        theta_answer = theta
    blend = HeadBlend(theta, mu, theta_answer if positions == "split" else None, base, positions)
    rows = prepare_rows(tiny_lm, prompts, intervention=blend)
    losses, last = row_losses(tiny_lm.params, c, blend, rows), row_losses(
        tiny_lm.params, c, HeadBlend(theta, mu, None, base), prepare_rows(tiny_lm, prompts, all_answer_tokens=True))
    for p, loss in zip(prompts, losses):
        assert p.stop == tuple(tiny_lm.tokenizer("\n")["input_ids"])  # the line break between demonstrations
        tokens = jnp.asarray([p.ids + p.answer])
        edit = jnp.zeros(tokens.shape, bool).at[0, len(p.ids) - 1:].set(True)
        reference = positional_blend(theta, mu, theta_answer, len(p.ids) - 1, tokens.shape[1], base)
        logp = jax.nn.log_softmax(tvjax.forward(tiny_lm.params, tokens, config=c, intervention=reference,
                                                edit_mask=edit).logits[0])
        nll = -np.array([logp[len(p.ids) - 1 + i, t] for i, t in enumerate(p.answer + list(p.stop))])
        # with 'split' the loss is theta_answer's: the answer after its first token, and the stop
        expected = nll.mean() if positions == "answer" else nll[1:].mean()
        np.testing.assert_allclose(loss, expected, rtol=1e-4, atol=1e-5)
    assert np.abs(np.asarray(losses) - np.asarray(last)).max() > 1e-3  # editing the answer tokens matters
