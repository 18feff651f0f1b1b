"""Generation with the KV cache against transformers' `generate`: greedy, stop strings, sampling."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import tvjax
from tvjax import HeadBlend, generation
from tvjax.batching import encode, pad_left
from tvjax.data import Template
from tvjax.generation import template_stop
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


def test_greedy_is_temperature_zero(tiny_models):
    _, (config, params, _), _ = tiny_models("llama")
    prompt = np.asarray([RNG.integers(3, config.vocab_size, size=6)])
    greedy = tvjax.generate(params, prompt, config=config, max_new_tokens=8, eos_token_id=-1)
    np.testing.assert_array_equal(tvjax.generate(params, prompt, config=config, max_new_tokens=8, eos_token_id=-1,
                                                 temperature=0, top_k=3, top_p=0.5, seed=4), greedy)


def test_a_seeded_sample_is_reproducible_and_differs_across_seeds(tiny_models):
    _, (config, params, _), _ = tiny_models("llama")
    tokens, mask = pad_left([RNG.integers(3, config.vocab_size, size=n).tolist() for n in (5, 8)])
    sample = lambda seed: tvjax.generate(params, tokens, config=config, mask=mask, max_new_tokens=12, eos_token_id=-1,
                                         temperature=1.0, seed=seed)
    np.testing.assert_array_equal(sample(0), sample(0))
    assert not np.array_equal(sample(0), sample(1))
    greedy = tvjax.generate(params, tokens, config=config, mask=mask, max_new_tokens=12, eos_token_id=-1)
    assert not np.array_equal(sample(0), greedy)


@pytest.mark.parametrize("options", [{"top_k": 1}, {"temperature": 1e-5}, {"top_p": 1e-6}])
def test_sampling_reduced_to_the_most_likely_token_is_greedy(tiny_models, options):
    _, (config, params, _), _ = tiny_models("llama")
    tokens, mask = pad_left([RNG.integers(3, config.vocab_size, size=n).tolist() for n in (5, 8)])
    greedy = tvjax.generate(params, tokens, config=config, mask=mask, max_new_tokens=12, eos_token_id=-1)
    sampled = tvjax.generate(params, tokens, config=config, mask=mask, max_new_tokens=12, eos_token_id=-1,
                             **{"temperature": 1.0, **options})
    np.testing.assert_array_equal(sampled, greedy)


def test_samples_follow_the_top_k_then_top_p_distribution(tiny_models):
    """First tokens of many copies of one prompt against softmax(logits / T) kept to its top 5,
    then to the 3 most likely of those (transformers' warpers, computed here in NumPy)."""
    _, (config, params, _), _ = tiny_models("llama")
    prompt = RNG.integers(3, config.vocab_size, size=6)
    logits = np.asarray(tvjax.forward(params, jnp.asarray([prompt]), config=config).logits[0, -1], np.float64)
    top = np.argsort(-logits)[:5]
    probs = np.exp((logits[top] - logits[top].max()) / 0.5)
    probs /= probs.sum()
    top_p = probs[:3].sum() - 1e-3 * probs[2]  # reached by the third token
    n = 4000
    first = tvjax.generate(params, np.tile(prompt, (n, 1)), config=config, max_new_tokens=1, temperature=0.5, top_k=5,
                           top_p=float(top_p), seed=3)[:, 0]
    counts = np.asarray([(first == t).sum() for t in top[:3]])
    assert counts.sum() == n, "only the 3 kept tokens are drawn"
    np.testing.assert_allclose(counts / n, probs[:3] / probs[:3].sum(), atol=0.03)


@pytest.mark.parametrize("options,message", [
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"temperature": -0.5}, "temperature"), ({"top_k": 0}, "top_k"),
    ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p")])
def test_bad_generation_arguments_raise(tiny_models, options, message):
    _, (config, params, _), _ = tiny_models("llama")
    with pytest.raises(ValueError, match=message):
        tvjax.generate(params, np.asarray([[5, 6, 7]]), config=config, **{"temperature": 1.0, **options})


def test_template_stop_is_its_separator():
    assert template_stop(Template()) == ("\n",)  # "Q: {input}\nA: {output}\n\n"
    assert template_stop(Template("{input} -> {output}; \n")) == (";", "\n")
    assert template_stop(Template("{input} = {output} ")) == ()
    assert template_stop(Template("{input}:{output}")) == ()


def _one_token_stop(tokenizer, row) -> tuple[int, str]:
    """`(position, text)` of the first token of `row` past its first one that is new (and so the
    row's first stop) and that is a whole stop string on its own."""
    row = row.tolist()
    texts = [tokenizer.decode([t]) for t in row]
    return next((i, texts[i]) for i in range(1, len(row))
                if row[i] not in row[:i] and tokenizer(texts[i], add_special_tokens=False)["input_ids"] == [row[i]])


def test_stop_strings_cut_the_text_and_end_decoding(tiny_lm, monkeypatch):
    """Every stop string cuts the text before its first occurrence; one that is a single token
    also ends its row inside the decoding loop (end-of-sequence after it). Prompts as
    `tvjax generate --query` writes them."""
    config, params, tokenizer = tiny_lm
    prompts = [Template().query(w)[0] for w in ("fast", "heavy")]
    free = generation.generate_text(tiny_lm, prompts, 12)
    tokens, mask = encode(tokenizer, prompts)
    row = tvjax.generate(params, tokens, config=config, mask=mask, max_new_tokens=12)[0]
    at, stop = _one_token_stop(tokenizer, row)
    decoded = []
    monkeypatch.setattr(generation, "generate", lambda *a, **k: decoded.append(tvjax.generate(*a, **k)) or decoded[-1])
    texts = generation.generate_text(tiny_lm, prompts, 12, stop=[stop])
    assert texts == [text[:text.index(stop)] if stop in text else text for text in free]
    assert at < 11 and texts[0] != free[0]
    np.testing.assert_array_equal(decoded[0][0, :at + 1], row[:at + 1])
    assert (decoded[0][0, at + 1:] == config.eos_ids[0]).all(), "the row ends at its stop token"
    several = free[1][2:7]  # inside and across tokens
    assert generation.generate_text(tiny_lm, prompts[1:], 12, stop=["never", several]) == \
        [free[1][:free[1].index(several)]]
    with pytest.raises(ValueError, match="stop string"):
        generation.generate_text(tiny_lm, prompts, 12, stop=[""])


def test_a_one_token_stop_ends_where_transformers_stop_strings_end(tiny_lm, tiny_lm_dir):
    config, params, tokenizer = tiny_lm
    ids = tokenizer(Template().query("fast")[0])["input_ids"]
    ours = tvjax.generate(params, np.asarray([ids]), config=config, max_new_tokens=12)[0]
    at, stop = _one_token_stop(tokenizer, ours)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_lm_dir).float().eval()
    with torch.no_grad():
        out = hf.generate(torch.as_tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          max_new_tokens=12, do_sample=False, stop_strings=[stop], tokenizer=tokenizer)
    theirs = out[0, len(ids):].numpy()
    np.testing.assert_array_equal(theirs, ours[: at + 1])
    assert generation.generate_text(tiny_lm, [ids], 12, stop=[stop]) == [tokenizer.decode(theirs[:at].tolist())]
