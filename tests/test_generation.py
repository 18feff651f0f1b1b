"""Greedy generation with the KV cache against transformers' `generate`."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import tvjax
from tvjax import HeadBlend
from tvjax.batching import pad_left
from conftest import positional_blend, torch_blend

RNG = np.random.default_rng(2)


def _hf_generate(hf, prompt, n):
    with torch.no_grad():
        out = hf.generate(torch.as_tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                          max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].numpy()


@pytest.mark.parametrize("family", ["llama", "llama3_tied", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "gpt2",
                                    "gpt_neox"])
def test_greedy_generation_matches_transformers(tiny_models, family):
    hf, (config, params, _), _ = tiny_models(family)
    prompt = RNG.integers(3, config.vocab_size, size=6).tolist()
    ours = tvjax.generate(params, np.asarray([prompt]), config=config, max_new_tokens=16, eos_token_id=-1)
    np.testing.assert_array_equal(ours[0], _hf_generate(hf, prompt, 16))


def test_batched_generation_equals_one_at_a_time(tiny_models):
    _, (config, params, _), _ = tiny_models("llama")
    prompts = [RNG.integers(3, config.vocab_size, size=n).tolist() for n in (3, 10, 6)]
    tokens, mask = pad_left(prompts)
    batch = tvjax.generate(params, tokens, config=config, mask=mask, max_new_tokens=12, eos_token_id=-1)
    for row, prompt in enumerate(prompts):
        alone = tvjax.generate(params, np.asarray([prompt]), config=config, max_new_tokens=12, eos_token_id=-1)
        np.testing.assert_array_equal(batch[row], alone[0])


def test_generation_with_blend_edits_last_prompt_token(tiny_models):
    hf, (config, params, _), _ = tiny_models("qwen2")
    prompt = RNG.integers(3, config.vocab_size, size=7).tolist()
    theta = RNG.normal(size=(config.n_layers, config.n_heads)).astype(np.float32) + 2
    mu = RNG.normal(size=(config.n_layers, config.n_heads, config.head_dim)).astype(np.float32)
    ours = tvjax.generate(params, np.asarray([prompt]), config=config, max_new_tokens=10,
                          intervention=HeadBlend(jnp.asarray(theta), jnp.asarray(mu)), eos_token_id=-1)
    with torch_blend(hf, 1 / (1 + np.exp(-theta)), mu, torch.as_tensor([6])):
        theirs = _hf_generate(hf, prompt, 10)
    np.testing.assert_array_equal(ours[0], theirs)
    plain = tvjax.generate(params, np.asarray([prompt]), config=config, max_new_tokens=10, eos_token_id=-1)
    assert not np.array_equal(plain[0], ours[0]), "the blend should change this generation"


def test_rows_stop_at_eos(tiny_models):
    _, (config, params, _), _ = tiny_models("llama")
    prompt = np.asarray([RNG.integers(3, config.vocab_size, size=5)])
    free = tvjax.generate(params, prompt, config=config, max_new_tokens=8, eos_token_id=-1)[0]
    eos = int(free[2])
    stopped = tvjax.generate(params, prompt, config=config, max_new_tokens=8, eos_token_id=eos)[0]
    first = list(free).index(eos)
    np.testing.assert_array_equal(stopped[: first + 1], free[: first + 1])
    assert (stopped[first:] == eos).all()


def test_rows_end_at_their_budgets(tiny_models):
    _, (config, params, _), _ = tiny_models("llama")
    tokens, mask = pad_left([RNG.integers(3, config.vocab_size, size=n).tolist() for n in (5, 8, 3)])
    free = tvjax.generate(params, tokens, config=config, mask=mask, max_new_tokens=10, eos_token_id=-1)
    budgets = [2, 10, 4]
    capped = tvjax.generate(params, tokens, config=config, mask=mask, max_new_tokens=10, eos_token_id=-1,
                            budgets=budgets)
    for row, budget in enumerate(budgets):
        np.testing.assert_array_equal(capped[row, :budget], free[row, :budget])
        assert (capped[row, budget:] == -1).all()


def test_a_prefill_in_query_blocks_generates_the_same(tiny_models):
    _, (config, params, _), _ = tiny_models("gemma3")
    tokens, mask = pad_left([RNG.integers(3, config.vocab_size, size=n).tolist() for n in (13, 7)])
    whole = tvjax.generate(params, tokens, config=config.replace(attention_chunk=None), mask=mask, max_new_tokens=8,
                           eos_token_id=-1)
    blocks = tvjax.generate(params, tokens, config=config.replace(attention_chunk=4), mask=mask, max_new_tokens=8,
                            eos_token_id=-1)
    np.testing.assert_array_equal(blocks, whole)


@pytest.mark.parametrize("positions,form", [("answer", "blend"), ("split", "blend"), ("split", "shift")])
def test_answer_positions_blend_every_generated_token_as_a_reference_loop_does(tiny_models, positions, form):
    """positions 'answer' / 'split' with the KV cache equals, step by step, a full forward of the
    prompt and the tokens generated so far with the blend at the last prompt token and every
    generated one (with 'split', the generated ones by `theta_answer`), from explicit per-position
    weights (the shift form too, with `base`)."""
    _, (config, params, _), _ = tiny_models("gemma3")
    rng = np.random.default_rng(7)
    theta = jnp.asarray(rng.normal(size=(config.n_layers, config.n_heads)) - 1, jnp.float32)
    mu = jnp.asarray(rng.normal(size=(config.n_layers, config.n_heads, config.head_dim)), jnp.float32)
    theta_answer = jnp.asarray(rng.normal(size=(config.n_layers, config.n_heads)) - 1, jnp.float32)
    base = jnp.asarray(rng.normal(size=mu.shape), jnp.float32) if form == "shift" else None
    if positions == "answer":
        theta_answer = theta
    blend = HeadBlend(theta, mu, theta_answer if positions == "split" else None, base, positions)
    prompts = [rng.integers(3, config.vocab_size, size=n).tolist() for n in (7, 4)]
    tokens, mask = pad_left(prompts)
    ours = tvjax.generate(params, tokens, config=config, mask=mask, max_new_tokens=8, intervention=blend,
                          eos_token_id=-1)
    for row, prompt in enumerate(prompts):
        sequence = list(prompt)
        for _ in range(8):
            edit = jnp.zeros((1, len(sequence)), bool).at[0, len(prompt) - 1:].set(True)
            reference = positional_blend(theta, mu, theta_answer, len(prompt) - 1, len(sequence), base)
            logits = tvjax.forward(params, jnp.asarray([sequence]), config=config, intervention=reference,
                                   edit_mask=edit).logits[0, -1]
            sequence.append(int(jnp.argmax(logits)))
        np.testing.assert_array_equal(ours[row], sequence[len(prompt):])
    last = tvjax.generate(params, tokens, config=config, mask=mask, max_new_tokens=8,
                          intervention=HeadBlend(theta, mu, None, base), eos_token_id=-1)
    assert not np.array_equal(last, ours), "blending the generated tokens should change this generation"
