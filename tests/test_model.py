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
