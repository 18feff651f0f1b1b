"""Per-architecture knowledge, in one place: Hugging Face config fields and weight names.

Each family maps a Hugging Face `config.json` to a `ModelConfig` and lists, for every
tvjax parameter, the checkpoint tensor it comes from and how to reshape it. Hugging
Face `nn.Linear` weights are `[out, in]`; GPT-2's `Conv1D` weights are `[in, out]`.
`HF_ATTENTION_OUTPUTS` says where `tvjax.torch_port` hooks a family's PyTorch modules.
Nothing here imports JAX.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from tvjax.config import ROPE_TYPES, ModelConfig

# model_type -> family (weight-naming scheme)
MODEL_TYPES = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "qwen3": "llama", "gemma2": "llama",
               "gemma3_text": "llama", "gpt2": "gpt2", "gpt_neox": "gpt_neox"}
GEMMA = ("gemma2", "gemma3_text")
# config.json fields older transformers left out when they equalled the class default
_DEFAULTS = {
    "gemma2": {"head_dim": 256, "query_pre_attn_scalar": 256, "sliding_window": 4096, "tie_word_embeddings": True,
               "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0, "rms_norm_eps": 1e-6},
    "gemma3_text": {"head_dim": 256, "query_pre_attn_scalar": 256, "sliding_window": 4096,
                    "tie_word_embeddings": True, "rms_norm_eps": 1e-6, "rope_theta": 1e6, "rope_local_base_freq": 10000.0},
    "qwen3": {"head_dim": 128},
}
SUPPORTED = ", ".join(sorted(MODEL_TYPES))
# family -> (attribute of the layer list in a transformers base model, path of the attention output
# projection in one layer: its input is the per-head site `[B, T, N * H]`, head-major)
HF_ATTENTION_OUTPUTS = {"llama": ("layers", "self_attn.o_proj"), "gpt2": ("h", "attn.c_proj"),
                        "gpt_neox": ("layers", "attention.dense")}

Transform = Callable[[np.ndarray], np.ndarray]
# tvjax param path -> (checkpoint tensor name, '{i}' for the layer index; transform)
WeightTable = dict[tuple[str, ...], tuple[str, Transform]]


class UnsupportedArchitecture(ValueError):
    pass


def config_from_hf(hf: dict) -> ModelConfig:
    """Translate a Hugging Face `config.json` dict into a `ModelConfig`."""
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
        raise UnsupportedArchitecture(
            f"unsupported architecture model_type={model_type!r} "
            f"(architectures={hf.get('architectures')}); supported model types: {SUPPORTED}"
        )
    try:
        return _config_from_hf(hf, model_type)
    except KeyError as e:
        raise UnsupportedArchitecture(f"config.json of model_type {model_type!r} lacks the field {e}") from e


def _config_from_hf(hf: dict, model_type: str) -> ModelConfig:
    hf = {**_DEFAULTS.get(model_type, {}), **hf}
    rope = _rope_parameters(hf)
    eos = hf.get("eos_token_id")
    tokens = {"bos_token_id": _first(hf.get("bos_token_id")), "pad_token_id": _first(hf.get("pad_token_id")),
              "eos_token_id": tuple(eos) if isinstance(eos, list) else eos}
    if model_type == "gpt2":
        D, N = hf["n_embd"], hf["n_head"]
        return ModelConfig(
            family="gpt2", vocab_size=hf["vocab_size"], d_model=D, n_layers=hf["n_layer"],
            n_heads=N, n_kv_heads=N, head_dim=D // N, mlp_dim=hf.get("n_inner") or 4 * D,
            norm="layer", norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            activation=_activation(hf.get("activation_function", "gelu_new")), gated_mlp=False,
            qkv_bias=True, out_bias=True, mlp_bias=True, positions="learned",
            max_positions=hf["n_positions"], tie_embeddings=hf.get("tie_word_embeddings", True),
            **tokens,
        )
    D, N = hf["hidden_size"], hf["num_attention_heads"]
    H = hf.get("head_dim") or D // N
    act = hf.get("hidden_activation") or hf.get("hidden_act") or ("gelu_pytorch_tanh" if model_type in GEMMA else "silu")
    common = dict(
        vocab_size=hf["vocab_size"], d_model=D, n_layers=hf["num_hidden_layers"], n_heads=N,
        head_dim=H, mlp_dim=hf["intermediate_size"], activation=_activation(act),
        max_positions=hf.get("max_position_embeddings", 2048), rope_theta=float(rope.pop("rope_theta")),
        tie_embeddings=hf.get("tie_word_embeddings", False), **tokens,
    )
    if model_type == "gpt_neox":
        partial = rope.pop("partial_rotary_factor", 1.0)
        return ModelConfig(
            family="gpt_neox", n_kv_heads=N, norm="layer", norm_eps=hf.get("layer_norm_eps", 1e-5),
            gated_mlp=False, qkv_bias=hf.get("attention_bias", True), out_bias=hf.get("attention_bias", True),
            mlp_bias=True, parallel_residual=hf.get("use_parallel_residual", True),
            rotary_dim=int(H * partial), rope_scaling=_scaling(rope), **common,
        )
    windowed = model_type in ("mistral",) + GEMMA or hf.get("use_sliding_window")
    window, local_layers = _windows(hf, model_type) if windowed else (None, ())
    local_rope = rope.pop("local_rope_theta", None)
    bias = hf.get("attention_bias", False)
    gemma = model_type in GEMMA
    return ModelConfig(
        family="llama", n_kv_heads=hf.get("num_key_value_heads") or N, norm="rms",
        norm_eps=hf.get("rms_norm_eps", 1e-6), qkv_bias=model_type == "qwen2" or bias, out_bias=bias,
        mlp_bias=hf.get("mlp_bias", False), sliding_window=window, local_layers=local_layers,
        local_rope_theta=local_rope if local_layers else None, rope_scaling=_scaling(rope),
        norm_plus_one=gemma, post_norms=gemma, embed_scale=gemma, qk_norm=model_type in ("qwen3", "gemma3_text"),
        query_pre_attn_scalar=hf.get("query_pre_attn_scalar") if gemma else None,
        attn_softcap=hf.get("attn_logit_softcapping") if model_type == "gemma2" else None,
        logit_softcap=hf.get("final_logit_softcapping") if gemma else None, **common,
    )


def _windows(hf: dict, model_type: str) -> tuple[int | None, tuple[bool, ...]]:
    """`(sliding_window, local_layers)`: which layers use the window, from `layer_types` or the
    family's pattern (Gemma 2 alternates from layer 0; Gemma 3 has every `sliding_window_pattern`-th
    layer global); `()` when every layer is alike."""
    window, L = hf.get("sliding_window"), hf["num_hidden_layers"]
    types = hf.get("layer_types")
    if types is None and model_type in GEMMA:
        every = 2 if model_type == "gemma2" else hf.get("sliding_window_pattern", hf.get("_sliding_window_pattern", 6))
        types = ["full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(L)]
    if types is None and model_type != "mistral" and "max_window_layers" in hf:  # Qwen2/3
        types = ["sliding_attention" if i >= hf["max_window_layers"] else "full_attention" for i in range(L)]
    local = tuple(t == "sliding_attention" for t in types) if types is not None else (True,) * L
    if window is None or not any(local):
        return None, ()
    return window, () if all(local) else local


def _rope_parameters(hf: dict) -> dict:
    """Rope settings from either transformers>=5 `rope_parameters` or the older fields."""
    rope = dict(hf.get("rope_parameters") or {})
    if "full_attention" in rope:  # per layer type (Gemma 3): global layers, and the local layers' base
        local = rope.get("sliding_attention") or {}
        if local.get("rope_type", "default") != "default":
            raise UnsupportedArchitecture(f"rope scaling on sliding-window layers ({local}) is not supported")
        rope = {**(rope["full_attention"] or {}), "local_rope_theta": local.get("rope_theta", 10000.0)}
    elif "rope_local_base_freq" in hf:
        rope["local_rope_theta"] = hf["rope_local_base_freq"]
    rope.update({k: v for k, v in (hf.get("rope_scaling") or {}).items() if k not in rope})
    rope.setdefault("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", 10000.0)))
    if "rotary_pct" in hf:
        rope.setdefault("partial_rotary_factor", hf["rotary_pct"])
    return rope


def _scaling(rope: dict) -> tuple:
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise UnsupportedArchitecture(f"rope scaling type {kind!r} is not supported; supported: {ROPE_TYPES}")
    return () if kind == "default" else tuple(sorted(rope.items()))


def _activation(name: str) -> str:
    return {"gelu_pytorch_tanh": "gelu_new", "gelu_fast": "gelu_new", "swish": "silu"}.get(name, name)


def _first(value):
    return value[0] if isinstance(value, list) else value


def weight_table(config: ModelConfig) -> tuple[WeightTable, WeightTable]:
    """`(global weights, per-layer weights)` for `config.family`."""
    return _TABLES[config.family](config)


def _linear(*shape: int) -> Transform:
    """`nn.Linear` weight `[out, in]` -> `[in, *shape]`."""
    return lambda w: w.T.reshape(w.shape[1], *shape)


def _heads_in(N: int, H: int) -> Transform:
    """Output projection `nn.Linear` weight `[D, N * H]` -> `[N, H, D]`."""
    return lambda w: w.T.reshape(N, H, w.shape[0])


def _bias(*shape: int) -> Transform:
    return lambda b: b.reshape(shape)


def _same(x: np.ndarray) -> np.ndarray:
    return x


def _llama(c: ModelConfig) -> tuple[WeightTable, WeightTable]:
    N, K, H, D = c.n_heads, c.n_kv_heads, c.head_dim, c.d_model
    glob = {("embed", "embedding"): ("model.embed_tokens.weight", _same),
            ("final_norm", "scale"): ("model.norm.weight", _same)}
    if not c.tie_embeddings:
        glob[("lm_head", "kernel")] = ("lm_head.weight", _linear(c.vocab_size))
    p = "model.layers.{i}."
    layer = {
        ("ln1", "scale"): (p + "input_layernorm.weight", _same),
        ("ln2", "scale"): (p + ("pre_feedforward" if c.post_norms else "post_attention") + "_layernorm.weight", _same),
        ("attn", "q", "kernel"): (p + "self_attn.q_proj.weight", _linear(N, H)),
        ("attn", "k", "kernel"): (p + "self_attn.k_proj.weight", _linear(K, H)),
        ("attn", "v", "kernel"): (p + "self_attn.v_proj.weight", _linear(K, H)),
        ("attn", "o", "kernel"): (p + "self_attn.o_proj.weight", _heads_in(N, H)),
        ("mlp", "gate", "kernel"): (p + "mlp.gate_proj.weight", _linear(c.mlp_dim)),
        ("mlp", "up", "kernel"): (p + "mlp.up_proj.weight", _linear(c.mlp_dim)),
        ("mlp", "down", "kernel"): (p + "mlp.down_proj.weight", _linear(D)),
    }
    if c.post_norms:  # Gemma: post_attention_layernorm is the attention output's norm
        layer[("post_attn_norm", "scale")] = (p + "post_attention_layernorm.weight", _same)
        layer[("post_mlp_norm", "scale")] = (p + "post_feedforward_layernorm.weight", _same)
    if c.qk_norm:
        for name in ("q", "k"):
            layer[("attn", f"{name}_norm", "scale")] = (p + f"self_attn.{name}_norm.weight", _same)
    if c.qkv_bias:
        for name, heads in (("q", N), ("k", K), ("v", K)):
            layer[("attn", name, "bias")] = (p + f"self_attn.{name}_proj.bias", _bias(heads, H))
    if c.out_bias:
        layer[("attn", "o", "bias")] = (p + "self_attn.o_proj.bias", _same)
    if c.mlp_bias:
        for name in ("gate", "up", "down"):
            layer[("mlp", name, "bias")] = (p + f"mlp.{name}_proj.bias", _same)
    return glob, layer


def _gpt2(c: ModelConfig) -> tuple[WeightTable, WeightTable]:
    N, H, D = c.n_heads, c.head_dim, c.d_model
    glob = {("embed", "embedding"): ("transformer.wte.weight", _same),
            ("pos_embed", "embedding"): ("transformer.wpe.weight", _same),
            ("final_norm", "scale"): ("transformer.ln_f.weight", _same),
            ("final_norm", "bias"): ("transformer.ln_f.bias", _same)}
    if not c.tie_embeddings:
        glob[("lm_head", "kernel")] = ("lm_head.weight", _linear(c.vocab_size))
    p = "transformer.h.{i}."
    layer = {
        ("ln1", "scale"): (p + "ln_1.weight", _same), ("ln1", "bias"): (p + "ln_1.bias", _same),
        ("ln2", "scale"): (p + "ln_2.weight", _same), ("ln2", "bias"): (p + "ln_2.bias", _same),
        ("attn", "o", "kernel"): (p + "attn.c_proj.weight", lambda w: w.reshape(N, H, D)),
        ("attn", "o", "bias"): (p + "attn.c_proj.bias", _same),
        ("mlp", "up", "kernel"): (p + "mlp.c_fc.weight", _same),
        ("mlp", "up", "bias"): (p + "mlp.c_fc.bias", _same),
        ("mlp", "down", "kernel"): (p + "mlp.c_proj.weight", _same),
        ("mlp", "down", "bias"): (p + "mlp.c_proj.bias", _same),
    }
    for j, name in enumerate("qkv"):  # c_attn: Conv1D [D, 3 * D], output laid out [3, N, H]
        layer[("attn", name, "kernel")] = (p + "attn.c_attn.weight", lambda w, j=j: w[:, j * D:(j + 1) * D].reshape(D, N, H))
        layer[("attn", name, "bias")] = (p + "attn.c_attn.bias", lambda b, j=j: b[j * D:(j + 1) * D].reshape(N, H))
    return glob, layer


def _gpt_neox(c: ModelConfig) -> tuple[WeightTable, WeightTable]:
    N, H, D = c.n_heads, c.head_dim, c.d_model
    glob = {("embed", "embedding"): ("gpt_neox.embed_in.weight", _same),
            ("final_norm", "scale"): ("gpt_neox.final_layer_norm.weight", _same),
            ("final_norm", "bias"): ("gpt_neox.final_layer_norm.bias", _same)}
    if not c.tie_embeddings:
        glob[("lm_head", "kernel")] = ("embed_out.weight", _linear(c.vocab_size))
    p = "gpt_neox.layers.{i}."
    layer = {
        ("ln1", "scale"): (p + "input_layernorm.weight", _same), ("ln1", "bias"): (p + "input_layernorm.bias", _same),
        ("ln2", "scale"): (p + "post_attention_layernorm.weight", _same),
        ("ln2", "bias"): (p + "post_attention_layernorm.bias", _same),
        ("attn", "o", "kernel"): (p + "attention.dense.weight", _heads_in(N, H)),
        ("mlp", "up", "kernel"): (p + "mlp.dense_h_to_4h.weight", _linear(c.mlp_dim)),
        ("mlp", "up", "bias"): (p + "mlp.dense_h_to_4h.bias", _same),
        ("mlp", "down", "kernel"): (p + "mlp.dense_4h_to_h.weight", _linear(D)),
        ("mlp", "down", "bias"): (p + "mlp.dense_4h_to_h.bias", _same),
    }
    if c.out_bias:
        layer[("attn", "o", "bias")] = (p + "attention.dense.bias", _same)
    for j, name in enumerate("qkv"):  # fused weight [N * 3 * H, D], laid out [N, 3, H]
        layer[("attn", name, "kernel")] = (p + "attention.query_key_value.weight",
                                           lambda w, j=j: w.reshape(N, 3, H, D)[:, j].transpose(2, 0, 1))
        if c.qkv_bias:
            layer[("attn", name, "bias")] = (p + "attention.query_key_value.bias", lambda b, j=j: b.reshape(N, 3, H)[:, j])
    return glob, layer


_TABLES = {"llama": _llama, "gpt2": _gpt2, "gpt_neox": _gpt_neox}
