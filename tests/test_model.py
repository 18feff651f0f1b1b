"""The decoder against Hugging Face transformers' PyTorch models (float32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tvjax
from tvjax.batching import pad_left
from conftest import FAMILIES, assert_logits_close, hf_logits

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(tiny_models, family):
    hf, (config, params, _), _ = tiny_models(family)
    tokens = RNG.integers(3, config.vocab_size, size=(2, 21))  # longer than the windows (Mistral 7, Gemma 5)
    out = tvjax.forward(params, jnp.asarray(tokens), config=config)
    assert out.logits.shape == (2, 21, config.vocab_size)
    assert_logits_close(out.logits, hf_logits(hf, tokens))


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "qwen3", "gemma2", "gemma3"])
def test_left_padded_batch_equals_each_prompt_alone(tiny_models, family):
    _, (config, params, _), _ = tiny_models(family)
    prompts = [RNG.integers(3, config.vocab_size, size=n).tolist() for n in (5, 17, 11)]
    tokens, mask = pad_left(prompts)
    batch = tvjax.forward(params, jnp.asarray(tokens), config=config, mask=jnp.asarray(mask)).logits
    T = tokens.shape[1]
    for row, prompt in enumerate(prompts):
        alone = tvjax.forward(params, jnp.asarray([prompt]), config=config).logits[0]
        np.testing.assert_allclose(batch[row, T - len(prompt):], alone, atol=1e-5, rtol=1e-5)


def test_padded_batch_matches_transformers_with_mask(tiny_models):
    hf, (config, params, _), _ = tiny_models("qwen2")
    tokens, mask = pad_left([RNG.integers(3, config.vocab_size, size=n).tolist() for n in (4, 9)])
    ours = tvjax.forward(params, jnp.asarray(tokens), config=config, mask=jnp.asarray(mask)).logits
    theirs = hf_logits(hf, tokens, mask)
    assert_logits_close(np.where(mask[..., None], ours, 0), np.where(mask[..., None], theirs, 0))


def test_logits_at_selects_one_position(tiny_models):
    _, (config, params, _), _ = tiny_models("llama")
    tokens = jnp.asarray(RNG.integers(3, config.vocab_size, size=(2, 8)))
    full = tvjax.forward(params, tokens, config=config).logits
    last = tvjax.forward(params, tokens, config=config, logits_at=jnp.array([7, 3])).logits
    np.testing.assert_allclose(last, full[jnp.arange(2), jnp.array([7, 3])], atol=1e-6)


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_changes_nothing(tiny_models, remat):
    _, (config, params, _), _ = tiny_models("llama")
    tokens = jnp.asarray(RNG.integers(3, config.vocab_size, size=(1, 10)))
    plain = tvjax.forward(params, tokens, config=config).logits
    rematted = tvjax.forward(params, tokens, config=config.replace(remat=remat)).logits
    np.testing.assert_allclose(rematted, plain, atol=1e-6)


def test_bfloat16_tracks_float32(tiny_models):
    _, _, directory = tiny_models("llama")
    config32, params32, _ = tvjax.load(str(directory))
    config16, params16, _ = tvjax.load(str(directory), dtype="bfloat16")
    assert jax.tree.leaves(params16)[0].dtype == jnp.bfloat16
    tokens = jnp.asarray(RNG.integers(3, config32.vocab_size, size=(1, 12)))
    ref = tvjax.forward(params32, tokens, config=config32).logits
    low = tvjax.forward(params16, tokens, config=config16).logits
    assert low.dtype == jnp.float32
    assert np.abs(low - ref).max() < 0.05 * np.abs(ref).max()


def _primitive_input_dtypes(jaxpr, seen=None) -> dict[str, set[str]]:
    """primitive name -> the dtypes of its array inputs, anywhere in `jaxpr` (scans, remat, jit)."""
    seen = {} if seen is None else seen
    for eqn in jaxpr.eqns:
        seen.setdefault(eqn.primitive.name, set()).update(str(v.aval.dtype) for v in eqn.invars
                                                         if hasattr(v.aval, "dtype"))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                if isinstance(sub, (jax.extend.core.Jaxpr, jax.extend.core.ClosedJaxpr)):
                    _primitive_input_dtypes(getattr(sub, "jaxpr", sub), seen)
    return seen


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_bfloat16_keeps_softmax_norms_blend_and_loss_in_float32(tiny_models, family):
    """The fit step's loss and gradient on a bfloat16 model, traced: every exp (softmaxes), log
    (the loss), rsqrt (norms) and reduction runs on float32, on a prompt long enough for query
    blocks; and the blend rounds to the model dtype once, after float32 math."""
    from tvjax.interventions import blend_heads
    from tvjax.model import KVCache
    from tvjax.rows import Rows, row_losses

    _, (config, _, _), _ = tiny_models(family)
    config = config.replace(dtype="bfloat16", attention_chunk=4)
    L, N, K, H = config.n_layers, config.n_heads, config.n_kv_heads, config.head_dim
    sds = jax.ShapeDtypeStruct
    params = jax.eval_shape(lambda: tvjax.init_params(config, jax.random.PRNGKey(0)))
    kv = sds((L, 2, 12, K, H), jnp.bfloat16)
    rows = Rows(KVCache(kv, kv, sds((2, 12), bool), sds((), jnp.int32)), *(sds((2, 5), t) for t in
                                                                            (jnp.int32, bool, jnp.int32, bool)))

    def loss(theta, mu, params, rows):
        return row_losses(params, config, tvjax.HeadBlend(theta, mu), rows).mean()

    jaxpr = jax.make_jaxpr(jax.value_and_grad(loss))(sds((L, N), jnp.float32), sds((L, N, H), jnp.float32),
                                                     params, rows)
    dtypes = _primitive_input_dtypes(jaxpr.jaxpr)
    assert "bfloat16" in dtypes["dot_general"]  # the matmuls do run in bfloat16
    for primitive in ("exp", "log", "rsqrt", "reduce_max", "reduce_sum"):
        assert "float32" in dtypes[primitive] and "bfloat16" not in dtypes[primitive], (primitive, dtypes[primitive])

    heads = jnp.asarray(RNG.normal(size=(1, 2, N, H)), jnp.bfloat16)
    theta, mu = jnp.asarray(RNG.normal(size=N), jnp.float32), jnp.asarray(RNG.normal(size=(N, H)), jnp.float32)
    w = jax.nn.sigmoid(theta)[:, None]
    expected = (heads.astype(jnp.float32) + w * (mu - heads.astype(jnp.float32))).astype(jnp.bfloat16)
    np.testing.assert_array_equal(blend_heads(heads, theta, mu, jnp.ones((1, 2), bool)), expected)


def test_bad_token_shapes_are_clear(tiny_models):
    _, (config, params, _), _ = tiny_models("llama")
    with pytest.raises(ValueError, match=r"tokens must be \[B, T\]"):
        tvjax.forward(params, jnp.zeros((4,), jnp.int32), config=config)
    with pytest.raises(ValueError, match="mask must match tokens"):
        tvjax.forward(params, jnp.zeros((1, 4), jnp.int32), config=config, mask=jnp.ones((1, 5), bool))


def test_config_rejects_unknown_values():
    with pytest.raises(ValueError, match="supported"):
        tvjax.ModelConfig(family="llama", vocab_size=8, d_model=8, n_layers=1, n_heads=2, n_kv_heads=2,
                          head_dim=4, mlp_dim=8, norm="batchnorm")


def test_learned_positions_beyond_the_table_are_an_error(tiny_models):
    _, (config, params, _), _ = tiny_models("gpt2")
    with pytest.raises(ValueError, match="exceed the model's learned position table \\(128\\)"):
        tvjax.forward(params, jnp.zeros((1, 129), jnp.int32), config=config)


@pytest.mark.parametrize("family, changes", [
    ("gemma3", dict(norm_plus_one=False)), ("gemma3", dict(embed_scale=False)), ("gemma3", dict(qk_norm=False)),
    ("gemma3", dict(local_rope_theta=None)), ("gemma3", dict(sliding_window=1000)),
    ("gemma3", dict(query_pre_attn_scalar=None)), ("gemma2", dict(attn_softcap=None)),
    ("gemma2", dict(logit_softcap=None)), ("gemma2", dict(local_layers=())), ("qwen3", dict(qk_norm=False))])
def test_the_parity_tests_see_each_family_feature(tiny_models, family, changes):
    """Each feature matters on the tiny configs (windows shorter than the prompt, distinct RoPE bases,
    caps that bite), so the parity tests above fail if it were implemented wrong."""
    hf, (config, params, _), _ = tiny_models(family)
    tokens = RNG.integers(3, config.vocab_size, size=(2, 21))
    broken = tvjax.forward(params, jnp.asarray(tokens), config=config.replace(**changes)).logits
    expected = hf_logits(hf, tokens)
    assert np.abs(broken - expected).max() > 1e-2 * np.abs(expected).max()
