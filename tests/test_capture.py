"""The capture/edit API: named sites against PyTorch, user edits against built-in interventions, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import tvjax
from tvjax.interventions import SITES, Edit, HeadBlend, ResidualEdit
from conftest import assert_logits_close, hf_logits

RNG = np.random.default_rng(3)


def _tokens(config, B=2, T=9):
    return jnp.asarray(RNG.integers(3, config.vocab_size, size=(B, T)))


# Where each family's PyTorch modules hold the sites: the layer stack, q / k / v (or the fused
# projection), the attention output projection (input: heads), the module whose output is attn (the
# projection, or Gemma's post-attention norm), the one whose output is mlp, and the MLP's down
# projection (input: mlp_hidden).
_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
TORCH_PATHS = {
    "llama": ("model.layers", _QKV, "self_attn.o_proj", "self_attn.o_proj", "mlp", "mlp.down_proj"),
    "gpt2": ("transformer.h", "attn.c_attn", "attn.c_proj", "attn.c_proj", "mlp", "mlp.c_proj"),
    "gpt_neox": ("gpt_neox.layers", "attention.query_key_value", "attention.dense", "attention.dense", "mlp",
                 "mlp.dense_4h_to_h"),
    "gemma3": ("model.layers", _QKV, "self_attn.o_proj", "post_attention_layernorm", "post_feedforward_layernorm",
               "mlp.down_proj"),
}
TORCH_PATHS["qwen2"] = TORCH_PATHS["llama"]


def _torch_sites(hf, family, config, tokens) -> dict[str, np.ndarray]:
    """Every site of every layer, `[B, L, T, ...]`, read from PyTorch hooks on the transformers model."""
    layers_path, qkv, o, attn, mlp, down = TORCH_PATHS[family]
    saved, handles = {}, []

    def keep(site, value):
        saved.setdefault(site, []).append(value.detach().float().numpy())

    for layer in hf.get_submodule(layers_path):
        handles += [
            layer.register_forward_pre_hook(lambda m, a, k: keep("resid_pre", a[0] if a else k["hidden_states"]),
                                            with_kwargs=True),
            layer.register_forward_hook(lambda m, i, out: keep("resid", out[0] if isinstance(out, tuple) else out)),
            layer.get_submodule(o).register_forward_pre_hook(lambda m, i: keep("heads", i[0])),
            layer.get_submodule(attn).register_forward_hook(lambda m, i, out: keep("attn", out)),
            layer.get_submodule(mlp).register_forward_hook(lambda m, i, out: keep("mlp", out)),
            layer.get_submodule(down).register_forward_hook(lambda m, i, out: keep("mlp_hidden", i[0]))]
        if isinstance(qkv, tuple):
            handles += [layer.get_submodule(path).register_forward_hook(lambda m, i, out, s=s: keep(s, out))
                        for s, path in zip("qkv", qkv)]
        else:
            handles.append(layer.get_submodule(qkv).register_forward_hook(lambda m, i, out: keep("qkv", out)))
    with torch.no_grad():
        attentions = hf(torch.as_tensor(np.asarray(tokens)), output_attentions=True).attentions
    for h in handles:
        h.remove()
    sites = {s: np.stack(v, axis=1) for s, v in saved.items()}  # [B, L, T, ...]
    B, L, T = sites["resid"].shape[:3]
    N, K, H = config.n_heads, config.n_kv_heads, config.head_dim
    if "qkv" in sites:  # GPT-2: [q | k | v]; GPT-NeoX: per head [q k v]
        qkv = sites.pop("qkv")
        parts = (np.split(qkv, 3, axis=-1) if family == "gpt2" else
                 np.split(qkv.reshape(B, L, T, N, 3 * H), 3, axis=-1))
        sites.update(zip("qkv", parts))
    sites.update(q=sites["q"].reshape(B, L, T, N, H), k=sites["k"].reshape(B, L, T, K, H),
                 v=sites["v"].reshape(B, L, T, K, H), heads=sites["heads"].reshape(B, L, T, N, H),
                 pattern=np.stack([a.float().numpy() for a in attentions], axis=1).transpose(0, 1, 3, 2, 4),
                 resid_mid=sites["resid_pre"] + sites["attn"])
    return sites


@pytest.mark.parametrize("family", sorted(TORCH_PATHS))
def test_every_site_matches_pytorch_at_every_position(tiny_models, family):
    hf, (config, params, _), _ = tiny_models(family)
    tokens = _tokens(config)
    out = tvjax.forward(params, tokens, config=config, capture=SITES)
    B, T = tokens.shape
    L, N, K, H, D, F = (config.n_layers, config.n_heads, config.n_kv_heads, config.head_dim, config.d_model,
                        config.mlp_dim)
    assert {s: v.shape for s, v in out.captured.items()} == {
        "resid_pre": (B, L, T, D), "q": (B, L, T, N, H), "k": (B, L, T, K, H), "v": (B, L, T, K, H),
        "pattern": (B, L, T, N, T), "heads": (B, L, T, N, H), "attn": (B, L, T, D), "resid_mid": (B, L, T, D),
        "mlp_hidden": (B, L, T, F), "mlp": (B, L, T, D), "resid": (B, L, T, D)}
    theirs = _torch_sites(hf, family, config, tokens)
    for site in SITES:
        ours = np.asarray(out.captured[site])
        scale = np.abs(theirs[site]).max()
        np.testing.assert_allclose(ours, theirs[site], atol=1e-5 * max(scale, 1), rtol=0, err_msg=site)
    at = jnp.array([3, 8])
    one = tvjax.forward(params, tokens, config=config, capture=("heads", "pattern"), capture_at=at).captured
    rows = np.arange(B)
    assert one["pattern"].shape == (B, L, N, T)  # one query's pattern, not [B, L, T, N, S]
    for site in ("heads", "pattern"):
        np.testing.assert_allclose(one[site], np.asarray(out.captured[site])[rows, :, at], atol=1e-6)


def test_transformer_lens_names_and_run_with_cache(tiny_models):
    _, model, _ = tiny_models("llama")
    config, params, _ = model
    tokens = _tokens(config)
    out = tvjax.forward(params, tokens, config=config, capture=("heads", "pattern", "resid_pre"))
    logits, cache = tvjax.run_with_cache(model, tokens, ["blocks.1.attn.hook_z", "attn.hook_pattern", "resid_pre",
                                                         "blocks.0.hook_resid_pre"])
    np.testing.assert_array_equal(logits, out.logits)
    np.testing.assert_array_equal(cache["blocks.1.attn.hook_z"], out.captured["heads"][:, 1])
    np.testing.assert_array_equal(cache["attn.hook_pattern"], out.captured["pattern"])
    np.testing.assert_array_equal(cache["blocks.0.hook_resid_pre"], out.captured["resid_pre"][:, 0])
    assert Edit("attn.hook_z", _zero_head, jnp.zeros((3, 2), int)).site == "heads"
    with pytest.raises(ValueError, match="unknown site 'attn.hook_result'"):
        tvjax.run_with_cache(model, tokens, ["blocks.0.attn.hook_result"])
    with pytest.raises(ValueError, match="cannot average 'pattern'"):
        tvjax.site_means(model, [], ("attn.hook_pattern",))


def _scale(x, layer, data):
    return x * 1.5 + 0.1


def test_edits_on_every_site_match_pytorch_hooks(tiny_models):
    """Each site edited at the last token (x -> 1.5 x + 0.1), against the same edit in a PyTorch hook."""
    hf, (config, params, _), _ = tiny_models("llama")
    tokens = _tokens(config)
    last = lambda x: torch.cat([x[:, :-1], 1.5 * x[:, -1:] + 0.1], dim=1)  # [B, T, ...]
    output_hook = lambda m, i, out: last(out)
    input_hook = lambda m, i: (last(i[0]), *i[1:])
    layers = hf.model.layers
    hooks = {  # site -> the modules and how to hook them
        "resid_pre": [(l, "pre_kwargs") for l in layers],
        "q": [(l.self_attn.q_proj, "out") for l in layers], "k": [(l.self_attn.k_proj, "out") for l in layers],
        "v": [(l.self_attn.v_proj, "out") for l in layers], "heads": [(l.self_attn.o_proj, "in") for l in layers],
        "attn": [(l.self_attn.o_proj, "out") for l in layers], "mlp_hidden": [(l.mlp.down_proj, "in") for l in layers],
        "mlp": [(l.mlp, "out") for l in layers], "resid": [(l, "out_tuple") for l in layers]}
    plain = hf_logits(hf, tokens)
    for site, targets in hooks.items():
        handles = []
        for module, how in targets:
            if how == "pre_kwargs":
                handles.append(module.register_forward_pre_hook(
                    lambda m, a, k: ((last(a[0]), *a[1:]), k) if a else (a, {**k, "hidden_states": last(
                        k["hidden_states"])}), with_kwargs=True))
            elif how == "in":
                handles.append(module.register_forward_pre_hook(input_hook))
            else:
                handles.append(module.register_forward_hook(
                    output_hook if how == "out" else
                    lambda m, i, out: (last(out[0]), *out[1:]) if isinstance(out, tuple) else last(out)))
        theirs = hf_logits(hf, tokens)
        for h in handles:
            h.remove()
        ours = tvjax.forward(params, tokens, config=config, intervention=Edit(site, _scale)).logits
        assert_logits_close(ours, theirs)
        assert np.abs(theirs - plain).max() > 1e-3, site
    # pattern and resid_mid, which no PyTorch module exposes, against edits that mean the same
    zero = lambda x, layer, data: x * 0
    same = [(Edit("pattern", zero), Edit("heads", zero)), (Edit("resid_mid", _add), Edit("attn", _add))]
    for a, b in same:
        np.testing.assert_allclose(tvjax.forward(params, tokens, config=config, intervention=a).logits,
                                   tvjax.forward(params, tokens, config=config, intervention=b).logits, atol=1e-5)


def _add(x, layer, data):
    return x + 0.3


def test_capturing_nothing_compiles_to_the_plain_model(tiny_models):
    """No capture and no edit: the lowered program returns the logits alone (no site leaves it)."""
    _, (config, params, _), _ = tiny_models("llama")
    tokens = _tokens(config)
    plain = jax.jit(lambda p, t: tvjax.forward(p, t, config=config)).lower(params, tokens)
    assert [x.shape for x in jax.tree.leaves(plain.out_info)] == [(2, 9, config.vocab_size)]


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
    with pytest.raises(ValueError, match=r"unknown site 'residual'; sites: resid_pre, q, k, v, pattern, heads"):
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
