"""Function vectors: indirect effects (batched vs one head at a time), the vector, adding it, the layer."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import tvjax
from tvjax.function_vectors import (FunctionVectorConfig, function_vector, function_vector_for,
                                    indirect_effects_reference, shuffled_label_prompts, top_heads)
from tvjax.interventions import ResidualEdit
from conftest import assert_logits_close

RNG = np.random.default_rng(5)


def hooked_logits(hf, tokens, layer: int, change) -> np.ndarray:
    """transformers' logits with `change(h)` applied to the last token's output `[B, D]` of `layer`."""

    def hook(module, inputs, output):
        output = output.clone()
        output[:, -1] = change(output[:, -1])
        return output

    handle = hf.model.layers[layer].register_forward_hook(hook)
    with torch.no_grad():
        logits = hf(torch.as_tensor(np.array(tokens))).logits.numpy()
    handle.remove()
    return logits


def test_function_vector_is_the_sum_of_projected_means_and_adds_like_a_hook(tiny_models):
    hf, (config, params, _), _ = tiny_models("llama")
    mu = RNG.normal(size=(config.n_layers, config.n_heads, config.head_dim)).astype(np.float32)
    heads = np.array([[0, 1], [2, 3], [1, 0]])
    o = np.asarray(params["layers"]["attn"]["o"]["kernel"])  # [L, N, H, D]
    expected = sum(mu[l, h] @ o[l, h] for l, h in heads)
    vector = function_vector(params, heads, mu)
    np.testing.assert_allclose(vector, expected, rtol=1e-5, atol=1e-6)

    tokens = RNG.integers(3, config.vocab_size, size=(2, 9))
    ours = tvjax.forward(params, jnp.asarray(tokens), config=config,
                         intervention=ResidualEdit.adding(config, 1, vector)).logits
    assert_logits_close(ours, hooked_logits(hf, tokens, 1, lambda h: h + torch.as_tensor(np.asarray(vector))))


def test_on_gemma_a_layers_heads_add_what_its_normed_attention_output_adds(tiny_models):
    """Gemma's attention output passes its post-attention norm before it joins the residual stream:
    the function vector of all of a layer's heads is transformers' normed o_proj output of their
    means, and the heads' shares add up to it."""
    hf, (config, params, _), _ = tiny_models("gemma3")
    assert config.post_norms
    mu = RNG.normal(size=(config.n_layers, config.n_heads, config.head_dim)).astype(np.float32)
    layer = 1
    every = np.array([[layer, h] for h in range(config.n_heads)])
    attn = hf.model.layers[layer]
    with torch.no_grad():
        expected = attn.post_attention_layernorm(attn.self_attn.o_proj(torch.as_tensor(mu[layer].reshape(-1)))).numpy()
    np.testing.assert_allclose(function_vector(params, every, mu, config), expected, rtol=1e-4, atol=1e-5)
    shares = sum(function_vector(params, every[i:i + 1], mu, config) for i in range(config.n_heads))
    np.testing.assert_allclose(shares, expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(function_vector(params, every, mu), expected, rtol=1e-2)  # what o_proj alone gives


def test_shuffled_label_prompts_keep_the_query_answer():
    from transformers import AutoTokenizer

    from tvjax.convert.default import default_model_dir

    tokenizer = AutoTokenizer.from_pretrained(str(default_model_dir()))
    task = tvjax.load_task("antonym")
    prompts = shuffled_label_prompts(tokenizer, task, n_prompts=8, shots=5, seed=1)
    pairs = dict(task.train)
    assert len({p.pair for p in prompts}) == 8 and all(p.pair in task.train for p in prompts)
    wrong = 0
    for p in prompts:
        text = tokenizer.decode(p.ids)
        demos = [block.split("\nA: ") for block in text.split("\n\n")[:-1]]
        wrong += sum(pairs.get(x.removeprefix("Q: ")) != y for x, y in demos)
    assert wrong > 30  # of 40 demonstrations, nearly all mislabelled


def test_top_heads_and_bad_k():
    effects = np.array([[0.1, 0.5, -0.2], [0.3, 0.0, 0.7]])
    np.testing.assert_array_equal(top_heads(effects, 3), [[1, 2], [0, 1], [1, 0]])
    for k in (0, 7):
        with pytest.raises(ValueError, match=rf"k = {k} heads requested; the model has 6 heads"):
            top_heads(effects, k)


def test_batched_indirect_effects_equal_one_head_at_a_time_and_pick_the_heads(tiny_lm, tiny_task):
    mu = tvjax.extract_means(tiny_lm, tiny_task, n_prompts=4, shots=3)
    config = FunctionVectorConfig(k=3, n_prompts=4, shots=3, sweep=True, batch_size=3)  # 8 heads: 3 + 3 + 2 (+ 1 pad)
    fv = function_vector_for(tiny_lm, tiny_task, mu, config)
    prompts = shuffled_label_prompts(tiny_lm.tokenizer, tiny_task, n_prompts=4, shots=3)
    reference = indirect_effects_reference(tiny_lm, prompts, mu)
    assert fv.effects.shape == (2, 4) and np.abs(reference).min() > 0  # small: a random model's probabilities
    np.testing.assert_allclose(fv.effects, reference, rtol=1e-3, atol=1e-10)
    np.testing.assert_array_equal(fv.heads, top_heads(fv.effects, 3))
    assert fv.layer_losses.shape == (2,) and fv.layer == int(np.argmin(fv.layer_losses))
    np.testing.assert_allclose(fv.vector, function_vector(tiny_lm.params, fv.heads, mu), rtol=1e-6)
    np.testing.assert_array_equal(fv.edit.add[fv.layer], fv.vector)
    assert not np.any(fv.edit.add[1 - fv.layer]) and not np.any(fv.edit.weight)
    with pytest.raises(ValueError, match="layer 2 out of range: the model has 2 layers"):
        function_vector_for(tiny_lm, tiny_task, mu, FunctionVectorConfig(layer=2))
