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


@pytest.fixture(scope="module")
def long_and_short_task(tiny_task):
    """tiny_task with every third input a long passage (prefixes of over 64 and of over 128 tokens)."""
    words = [x for x, _ in tiny_task.train + tiny_task.valid + tiny_task.test]
    long = lambda i, w: " ".join([w] * (80 if i % 2 else 150)) if i % 3 == 0 else w
    return tvjax.Task.from_pairs("mixed", [(long(i, w), w.upper()) for i, w in enumerate(words)], seed=0)


def test_prompts_of_very_different_lengths_are_blocks_scored_as_one_at_a_time(tiny_lm, long_and_short_task):
    """Prefixes in blocks by length (each padded to its own longest) score as each prompt alone;
    a batch gathered across blocks (left-padded to its longest block) too, in the order asked."""
    from tvjax.rows import Blocks, gather, losses, n_rows, scores

    prompts, _ = prompts_for(tiny_lm.tokenizer, long_and_short_task, "train", 0)
    c = tiny_lm.config
    rng = np.random.default_rng(2)
    blend = HeadBlend(jnp.asarray(rng.normal(size=(c.n_layers, c.n_heads)), jnp.float32),
                      jnp.asarray(rng.normal(size=(c.n_layers, c.n_heads, c.head_dim)), jnp.float32))
    rows = prepare_rows(tiny_lm, prompts, batch_size=4)
    assert isinstance(rows, Blocks) and len(rows.parts) == 3 and n_rows(rows) == len(prompts)
    assert max(part.cache.k.shape[2] for part in rows.parts) > 4 * min(part.cache.k.shape[2] for part in rows.parts)
    singles = np.array([losses(tiny_lm.params, blend, prepare_rows(tiny_lm, [p], batch_size=1), config=c)[0]
                        for p in prompts])
    np.testing.assert_allclose(losses(tiny_lm.params, blend, rows, config=c), singles, rtol=1e-5, atol=1e-6)
    assert scores(tiny_lm.params, blend, rows, config=c)[1].shape == (len(prompts),)
    index = np.array([5, 0, 3, 1, 3])  # long and short, repeated, out of order
    np.testing.assert_allclose(row_losses(tiny_lm.params, c, blend, gather(rows, index)), singles[index],
                               rtol=1e-5, atol=1e-6)


def test_a_fit_on_blocks_equals_the_fit_in_one_block(tiny_lm, long_and_short_task, monkeypatch):
    """Fitting on rows in blocks (train batches gathered across them, validation per block) is
    the fit of the same rows padded to the longest: the same history and vector."""
    from tvjax import rows
    from tvjax.extract import extract_means
    from tvjax.fitting import FitConfig, fit

    mu = extract_means(tiny_lm, long_and_short_task, n_prompts=4, shots=2)
    settings = FitConfig(steps=6, eval_every=3, batch_size=2, positions="last", form="blend")
    blocked = fit(tiny_lm, long_and_short_task, mu, settings)
    monkeypatch.setattr(rows, "BLOCK_FROM", 10**6)
    one = fit(tiny_lm, long_and_short_task, mu, settings)
    np.testing.assert_allclose(blocked.blend.theta, one.blend.theta, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([h["valid_loss"] for h in blocked.history], [h["valid_loss"] for h in one.history],
                               rtol=1e-5)
