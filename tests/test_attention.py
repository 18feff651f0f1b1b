"""Attention paths (einsums, `jax.nn.dot_product_attention`, query blocks) against all queries at
once through einsums, which `test_model.py` checks against transformers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tvjax
from tvjax.batching import pad_left
from conftest import FAMILIES, assert_logits_close

RNG = np.random.default_rng(0)


ATTENTION_PATHS = {"dot_product": dict(attention="dot_product", attention_chunk=None),
                   "einsum in chunks of 4": dict(attention_chunk=4),
                   "dot_product in chunks of 4": dict(attention="dot_product", attention_chunk=4)}


@pytest.mark.filterwarnings("ignore:attention='dot_product' cannot express")  # gemma2, tested below
@pytest.mark.parametrize("path", ATTENTION_PATHS)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_attention_path_gives_the_einsum_logits_and_heads(tiny_models, family, path):
    """Left-padded prompts longer than the windows and than 4 queries: the fused call and the
    query blocks agree with all queries at once through einsums (itself checked against
    transformers above), and the heads site means the same."""
    _, (config, params, _), _ = tiny_models(family)
    tokens, mask = pad_left([RNG.integers(3, config.vocab_size, size=n).tolist() for n in (21, 13)])
    tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)

    def run(**changes):
        out = tvjax.forward(params, tokens, config=config.replace(**changes), mask=mask, capture="heads")
        return np.asarray(out.logits)[mask], np.asarray(out.heads).swapaxes(1, 2)[mask]  # real positions

    logits, heads = run(attention_chunk=None)
    other_logits, other_heads = run(**ATTENTION_PATHS[path])
    assert_logits_close(other_logits, logits, 1e-5)
    np.testing.assert_allclose(other_heads, heads, atol=1e-5 * np.abs(heads).max())


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_blend_gradients_flow_through_query_blocks(tiny_models, family):
    _, (config, params, _), _ = tiny_models(family)
    tokens = jnp.asarray(RNG.integers(3, config.vocab_size, size=(2, 11)))
    mu = jnp.asarray(RNG.normal(size=(config.n_layers, config.n_heads, config.head_dim)), jnp.float32)
    edit = jnp.zeros(tokens.shape, bool).at[:, 5:].set(True)  # positions in two of the three blocks

    def grad(c):
        loss = lambda theta: tvjax.forward(params, tokens, config=c, intervention=tvjax.HeadBlend(theta, mu),
                                           edit_mask=edit).logits[:, 5:].std()
        return jax.grad(loss)(jnp.zeros((config.n_layers, config.n_heads)))

    whole = grad(config.replace(attention_chunk=None))
    for changes in ATTENTION_PATHS.values():
        np.testing.assert_allclose(grad(config.replace(**changes)), whole, atol=1e-5 * np.abs(whole).max())


def test_soft_capped_attention_stays_on_einsums_and_says_so(tiny_models):
    _, (config, params, _), _ = tiny_models("gemma2")
    tokens = jnp.asarray(RNG.integers(3, config.vocab_size, size=(1, 9)))
    with pytest.warns(UserWarning, match="soft-capped"):
        fused = tvjax.forward(params, tokens, config=config.replace(attention="dot_product")).logits
    np.testing.assert_array_equal(fused, tvjax.forward(params, tokens, config=config).logits)


def test_the_pattern_site_is_the_same_under_the_fused_path(tiny_models):
    _, (config, params, _), _ = tiny_models("gemma3")
    tokens = jnp.asarray(RNG.integers(3, config.vocab_size, size=(2, 9)))
    sites = ("pattern", "heads")
    einsum = tvjax.forward(params, tokens, config=config, capture=sites).captured
    fused = tvjax.forward(params, tokens, config=config.replace(attention="dot_product", attention_chunk=4),
                          capture=sites).captured
    for site in sites:
        np.testing.assert_allclose(fused[site], einsum[site], atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_a_4096_token_prompt_in_query_blocks_equals_all_queries_at_once(tiny_models, family):
    _, (config, params, _), _ = tiny_models(family)
    assert config.attention_chunk == 1024  # the default splits this prompt into 4 blocks
    tokens = jnp.asarray(RNG.integers(3, config.vocab_size, size=(1, 4096)))
    last = jnp.array([4095])
    whole = tvjax.forward(params, tokens, config=config.replace(attention_chunk=None), capture_at=last)
    chunked = tvjax.forward(params, tokens, config=config, capture_at=last)
    assert_logits_close(chunked.logits, whole.logits, 1e-5)
    np.testing.assert_allclose(chunked.heads, whole.heads, atol=1e-5 * np.abs(whole.heads).max())


def test_query_blocks_keep_attention_memory_linear_in_the_prompt(tiny_models):
    """XLA's compiled memory: doubling the prompt doubles the temporaries in blocks of 512 queries
    (measured 34 -> 68 MiB), and near quadruples them with all queries at once, where the
    `[B, K, G, T, S]` scores dominate (196 -> 530 MiB)."""
    _, (config, params, _), _ = tiny_models("llama")

    def temporaries(T: int, chunk: int | None) -> int:
        tokens = jax.ShapeDtypeStruct((1, T), jnp.int32)
        compiled = tvjax.forward.lower(params, tokens, config=config.replace(attention_chunk=chunk)).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    blocks, whole = temporaries(4096, 512), temporaries(4096, None)
    assert blocks / temporaries(2048, 512) < 2.1
    assert whole / temporaries(2048, None) > 2.5
    assert blocks < whole / 4
