"""Per-architecture knowledge, in one place: one `Architecture` record per Hugging Face model type.

A record says how its `config.json` becomes a `ModelConfig`, which weight-naming family
(`Weights`) its checkpoint tensors follow, and how llama.cpp writes it into a GGUF file
(`Gguf`). Adding a model type is adding one record to `_RECORDS` (at the end); the tables
(`ARCHITECTURES`, `MODEL_TYPES`, `HF_ATTENTION_OUTPUTS`, `GGUF_ARCHITECTURES`) are read off them.
A weight table lists, for every tvjax parameter, the checkpoint tensor it comes from and
how to reshape it. Hugging Face `nn.Linear` weights are `[out, in]`; GPT-2's `Conv1D`
weights are `[in, out]`. Nothing here imports JAX.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Mapping

import numpy as np

from tvjax.config import ROPE_TYPES, ModelConfig

Transform = Callable[[np.ndarray], np.ndarray]
# tvjax param path -> (checkpoint tensor name, '{i}' for the layer index; transform)
WeightTable = dict[tuple[str, ...], tuple[str, Transform]]
GgufConfig = Callable[[Callable, dict], dict]  # (metadata getter, shared config fields) -> the model type's own
# GGUF tensor names (llama.cpp's) -> Hugging Face names: whole names, and the layer tensors' short names
# (between `blk.{i}.` and `.weight` / `.bias`) -> modules under `model.layers.{i}.`
GGUF_GLOBAL_TENSORS = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                       "output.weight": "lm_head.weight"}
GGUF_LAYER_TENSORS = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GGUF_QK_NORMS = {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
_GGUF_GEMMA_NORMS = {"post_attention_norm": "post_attention_layernorm", "ffn_norm": "pre_feedforward_layernorm",
                     "post_ffw_norm": "post_feedforward_layernorm"}


class UnsupportedArchitecture(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Weights:
    """A weight-naming family (`ModelConfig.family`): where each tvjax param lies in a checkpoint.

    family: its name.  table: `ModelConfig -> (global weights, per-layer weights)`.
    attention_output: (attribute of the layer list in a transformers base model, path of the attention
      output projection in one layer), where `tvjax.torch_port` hooks: its input is the per-head site
      `[B, T, N * H]`, head-major.
    """

    family: str
    table: Callable[[ModelConfig], tuple[WeightTable, WeightTable]]
    attention_output: tuple[str, str]


@dataclasses.dataclass(frozen=True)
class Gguf:
    """How llama.cpp writes a model type into a GGUF file, and what reading one undoes.

    arch: `general.architecture`, also the prefix of the file's metadata keys.
    hf_class: the `architectures` entry of the config transformers builds for the file.
    config: `(get, config) -> fields` of the Hugging Face config that are the model type's own, where
      `get(key, default)` reads the metadata key `{arch}.{key}` and `config` holds the fields every
      architecture shares (`rope_parameters`: the file's rotary, with its scaling).
    layer_tensors / global_tensors: GGUF tensor names -> Hugging Face names (see `GGUF_LAYER_TENSORS`).
    permute_qk: the q/k rows are permuted for llama.cpp's interleaved rotary (undone on reading).
    norm_plus_one: norm weights are stored as `1 + w` (llama.cpp folds Gemma's 1 in; subtracted again).
    rms_norm_eps: the RMSNorm epsilon of a file that has none.
    sentencepiece: its `llama` vocabulary is Gemma's sentencepiece one, which tvjax builds without PyTorch
      (`tvjax.convert.tokenizer`).
    """

    arch: str
    hf_class: str
    config: GgufConfig
    layer_tensors: Mapping[str, str]
    global_tensors: Mapping[str, str] = dataclasses.field(default_factory=lambda: GGUF_GLOBAL_TENSORS)
    permute_qk: bool = False
    norm_plus_one: bool = False
    rms_norm_eps: float = 1e-5
    sentencepiece: bool = False


@dataclasses.dataclass(frozen=True)
class Architecture:
    """Everything tvjax knows of one Hugging Face model type.

    model_type: `config.json`'s `model_type`.
    weights: the weight-naming family its checkpoints follow.
    config: `config.json` dict (with `defaults` filled in) -> the `ModelConfig` fields but `family`.
    defaults: `config.json` fields older transformers left out when they equalled the class default.
    gguf: how llama.cpp writes it; None: tvjax reads no GGUF file of it.
    """

    model_type: str
    weights: Weights
    config: Callable[[dict], dict]
    defaults: Mapping = dataclasses.field(default_factory=dict)
    gguf: Gguf | None = None


def config_from_hf(hf: dict) -> ModelConfig:
    """Translate a Hugging Face `config.json` dict into a `ModelConfig`."""
    model_type = hf.get("model_type")
    if model_type not in ARCHITECTURES:
        raise UnsupportedArchitecture(
            f"unsupported architecture model_type={model_type!r} "
            f"(architectures={hf.get('architectures')}); supported model types: {SUPPORTED}"
        )
    arch = ARCHITECTURES[model_type]
    try:
        return ModelConfig(family=arch.weights.family, **arch.config({**arch.defaults, **hf}))
    except KeyError as e:
        raise UnsupportedArchitecture(f"config.json of model_type {model_type!r} lacks the field {e}") from e


def weight_table(config: ModelConfig) -> tuple[WeightTable, WeightTable]:
    """`(global weights, per-layer weights)` for `config.family`."""
    return _WEIGHTS[config.family].table(config)


# --- config.json -> ModelConfig fields ---------------------------------------------------------------

def _gpt2_config(hf: dict) -> dict:
    D, N = hf["n_embd"], hf["n_head"]
    return dict(
        vocab_size=hf["vocab_size"], d_model=D, n_layers=hf["n_layer"], n_heads=N, n_kv_heads=N, head_dim=D // N,
        mlp_dim=hf.get("n_inner") or 4 * D, norm="layer", norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        activation=_activation(hf.get("activation_function", "gelu_new")), gated_mlp=False, qkv_bias=True,
        out_bias=True, mlp_bias=True, position_embedding="learned", max_positions=hf["n_positions"],
        tie_embeddings=hf.get("tie_word_embeddings", True), **_tokens(hf),
    )


def _gpt_neox_config(hf: dict) -> dict:
    rope = _rope_parameters(hf)
    common = _rotary_fields(hf, rope, "silu")
    partial = rope.pop("partial_rotary_factor", 1.0)
    bias = hf.get("attention_bias", True)
    return dict(
        n_kv_heads=common["n_heads"], norm="layer", norm_eps=hf.get("layer_norm_eps", 1e-5), gated_mlp=False,
        qkv_bias=bias, out_bias=bias, mlp_bias=True, parallel_residual=hf.get("use_parallel_residual", True),
        rotary_dim=int(common["head_dim"] * partial), rope_scaling=_scaling(rope), **common,
    )


def _max_window_layers(hf: dict) -> list[str] | None:
    """Qwen2/3: the layers from `max_window_layers` on slide."""
    if "max_window_layers" not in hf:
        return None
    return ["sliding_attention" if i >= hf["max_window_layers"] else "full_attention"
            for i in range(hf["num_hidden_layers"])]


def _every(hf: dict, n: int) -> list[str]:
    """Gemma: every `n`-th layer global, the others sliding."""
    return ["full_attention" if (i + 1) % n == 0 else "sliding_attention" for i in range(hf["num_hidden_layers"])]


def _llama_config(hf: dict, *, activation: str = "silu", sliding: bool = False,
                  layer_types: Callable[[dict], list[str] | None] | None = _max_window_layers,
                  fields: Callable[[dict], dict] = lambda hf: {}) -> dict:
    """The fields of a Llama-family model type.

    activation: when the config names none.  sliding: the model type always has a sliding window (else
    only with `use_sliding_window`).  layer_types: `hf -> layer_types` for a config that lists none (None:
    every layer slides).  fields: `hf -> the model type's own fields` (over the Llama ones).
    """
    rope = _rope_parameters(hf)
    common = _rotary_fields(hf, rope, activation)
    window, local_layers = _windows(hf, layer_types) if sliding or hf.get("use_sliding_window") else (None, ())
    local_rope = rope.pop("local_rope_theta", None)
    bias = hf.get("attention_bias", False)
    return {**dict(
        n_kv_heads=hf.get("num_key_value_heads") or common["n_heads"], norm="rms",
        norm_eps=hf.get("rms_norm_eps", 1e-6), qkv_bias=bias, out_bias=bias, mlp_bias=hf.get("mlp_bias", False),
        sliding_window=window, local_layers=local_layers, local_rope_theta=local_rope if local_layers else None,
        rope_scaling=_scaling(rope), **common,
    ), **fields(hf)}


def _llama_like(**options) -> Callable[[dict], dict]:
    """`_llama_config` with a model type's `options`."""
    return functools.partial(_llama_config, **options)


def _gemma(hf: dict) -> dict:
    """Gemma 2/3: norms scale by `1 + w`, sandwich norms, scaled embeddings, its query scale and logit cap."""
    return dict(norm_plus_one=True, post_norms=True, embed_scale=True,
                query_pre_attn_scalar=hf.get("query_pre_attn_scalar"), logit_softcap=hf.get("final_logit_softcapping"))


def _rotary_fields(hf: dict, rope: dict, activation: str) -> dict:
    """The fields every rotary family reads alike (`rope_theta` is popped from `rope`)."""
    D, N = hf["hidden_size"], hf["num_attention_heads"]
    act = hf.get("hidden_activation") or hf.get("hidden_act") or activation
    return dict(
        vocab_size=hf["vocab_size"], d_model=D, n_layers=hf["num_hidden_layers"], n_heads=N,
        head_dim=hf.get("head_dim") or D // N, mlp_dim=hf["intermediate_size"], activation=_activation(act),
        max_positions=hf.get("max_position_embeddings", 2048), rope_theta=float(rope.pop("rope_theta")),
        tie_embeddings=hf.get("tie_word_embeddings", False), **_tokens(hf),
    )


def _windows(hf: dict, layer_types) -> tuple[int | None, tuple[bool, ...]]:
    """`(sliding_window, local_layers)`: which layers use the window, from the config's `layer_types` or
    else the model type's `layer_types(hf)`; `()` when every layer is alike."""
    window, L = hf.get("sliding_window"), hf["num_hidden_layers"]
    types = hf.get("layer_types")
    if types is None and layer_types is not None:
        types = layer_types(hf)
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


def _tokens(hf: dict) -> dict:
    eos = hf.get("eos_token_id")
    return {"bos_token_id": _first(hf.get("bos_token_id")), "pad_token_id": _first(hf.get("pad_token_id")),
            "eos_token_id": tuple(eos) if isinstance(eos, list) else eos}


def _first(value):
    return value[0] if isinstance(value, list) else value


# --- weight tables -----------------------------------------------------------------------------------

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
def _llama_weights(c: ModelConfig) -> tuple[WeightTable, WeightTable]:
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


def _gpt2_weights(c: ModelConfig) -> tuple[WeightTable, WeightTable]:
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
        layer[("attn", name, "kernel")] = (p + "attn.c_attn.weight",
                                           lambda w, j=j: w[:, j * D:(j + 1) * D].reshape(D, N, H))
        layer[("attn", name, "bias")] = (p + "attn.c_attn.bias", lambda b, j=j: b[j * D:(j + 1) * D].reshape(N, H))
    return glob, layer


def _gpt_neox_weights(c: ModelConfig) -> tuple[WeightTable, WeightTable]:
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
            layer[("attn", name, "bias")] = (p + "attention.query_key_value.bias",
                                             lambda b, j=j: b.reshape(N, 3, H)[:, j])
    return glob, layer


LLAMA = Weights("llama", _llama_weights, ("layers", "self_attn.o_proj"))
GPT2 = Weights("gpt2", _gpt2_weights, ("h", "attn.c_proj"))
GPT_NEOX = Weights("gpt_neox", _gpt_neox_weights, ("layers", "attention.dense"))


# --- GGUF metadata -> Hugging Face config fields -----------------------------------------------------

def _silu_gguf(get, config: dict) -> dict:
    return {"hidden_act": "silu"}


def _qwen3_gguf(get, config: dict) -> dict:
    """As Llama's, with transformers' Qwen3 window settings (none)."""
    return {"hidden_act": "silu", "use_sliding_window": False, "sliding_window": None,
            "layer_types": ["full_attention"] * config["num_hidden_layers"]}


def _gemma_gguf(get, config: dict, *, big: int, every: int) -> dict:
    """Gemma 2/3. llama.cpp scales queries by 1/sqrt(n_embd / n_head) in the 27B models (`big` layers: 46
    in Gemma 2, 62 in Gemma 3; transformers' query_pre_attn_scalar 144 / 168), else by 1/sqrt(head_dim).
    Without `attention.sliding_window_pattern` every `every`-th layer is global."""
    D, N, L = config["hidden_size"], config["num_attention_heads"], config["num_hidden_layers"]
    window = get("attention.sliding_window")
    local = _local_layers(get("attention.sliding_window_pattern"), L, every)
    return {
        "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": D // N if L == big else config["head_dim"],
        "sliding_window": int(window) if window is not None else 4096,
        "layer_types": ["sliding_attention" if x else "full_attention" for x in local],
        "attn_logit_softcapping": get("attn_logit_softcapping"),
        "final_logit_softcapping": get("final_logit_softcapping"),
    }


def _gemma3_gguf(get, config: dict) -> dict:
    """As Gemma 2's (one global layer in six), the file's rotary on the global layers and llama.cpp's
    (and transformers') base 10000 on the local ones."""
    return {**_gemma_gguf(get, config, big=62, every=6),
            "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                "full_attention": config["rope_parameters"]}}


def _local_layers(pattern, n_layers: int, default: int) -> list[bool]:
    """Which layers are sliding-window ones: llama.cpp's `sliding_window_pattern` (a period `n`: the
    last layer of every `n` is global; or one flag per layer), else the architecture's period."""
    if isinstance(pattern, list):
        return [bool(x) for x in pattern]
    n = int(pattern or default)
    return [i % n < n - 1 for i in range(n_layers)]


# --- the records -------------------------------------------------------------------------------------

_GEMMA_GGUF = dict(norm_plus_one=True, rms_norm_eps=1e-6, sentencepiece=True)
_RECORDS = (
    Architecture("llama", LLAMA, _llama_config,
                 gguf=Gguf("llama", "LlamaForCausalLM", _silu_gguf, GGUF_LAYER_TENSORS, permute_qk=True)),
    Architecture("mistral", LLAMA, _llama_like(sliding=True, layer_types=None)),  # llama.cpp writes it as 'llama'
    Architecture("qwen2", LLAMA, _llama_like(fields=lambda hf: {"qkv_bias": True}),
                 gguf=Gguf("qwen2", "Qwen2ForCausalLM", _silu_gguf, GGUF_LAYER_TENSORS)),
    Architecture("qwen3", LLAMA, _llama_like(fields=lambda hf: {"qk_norm": True}), defaults={"head_dim": 128},
                 gguf=Gguf("qwen3", "Qwen3ForCausalLM", _qwen3_gguf, {**GGUF_LAYER_TENSORS, **_GGUF_QK_NORMS})),
    Architecture(
        "gemma2", LLAMA,
        _llama_like(activation="gelu_pytorch_tanh", sliding=True, layer_types=lambda hf: _every(hf, 2),
                    fields=lambda hf: {**_gemma(hf), "attn_softcap": hf.get("attn_logit_softcapping")}),
        defaults={"head_dim": 256, "query_pre_attn_scalar": 256, "sliding_window": 4096, "tie_word_embeddings": True,
                  "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0, "rms_norm_eps": 1e-6},
        gguf=Gguf("gemma2", "Gemma2ForCausalLM", functools.partial(_gemma_gguf, big=46, every=2),
                  {**GGUF_LAYER_TENSORS, **_GGUF_GEMMA_NORMS}, **_GEMMA_GGUF),
    ),
    Architecture(
        "gemma3_text", LLAMA,
        _llama_like(activation="gelu_pytorch_tanh", sliding=True, fields=lambda hf: {**_gemma(hf), "qk_norm": True},
                    layer_types=lambda hf: _every(hf, hf.get("sliding_window_pattern",
                                                             hf.get("_sliding_window_pattern", 6)))),
        defaults={"head_dim": 256, "query_pre_attn_scalar": 256, "sliding_window": 4096, "tie_word_embeddings": True,
                  "rms_norm_eps": 1e-6, "rope_theta": 1e6, "rope_local_base_freq": 10000.0},
        # a gemma3 GGUF holds the text model only
        gguf=Gguf("gemma3", "Gemma3ForCausalLM", _gemma3_gguf,
                  {**GGUF_LAYER_TENSORS, **_GGUF_GEMMA_NORMS, **_GGUF_QK_NORMS}, **_GEMMA_GGUF),
    ),
    Architecture("gpt2", GPT2, _gpt2_config),
    Architecture("gpt_neox", GPT_NEOX, _gpt_neox_config),
)
ARCHITECTURES = {a.model_type: a for a in _RECORDS}  # model_type -> its record
GGUF_ARCHITECTURES = {a.gguf.arch: a for a in _RECORDS if a.gguf is not None}  # GGUF architecture -> its record
MODEL_TYPES = {a.model_type: a.weights.family for a in _RECORDS}  # model_type -> family
SUPPORTED = ", ".join(sorted(MODEL_TYPES))
_WEIGHTS = {a.weights.family: a.weights for a in _RECORDS}
# family -> where tvjax.torch_port hooks its attention output (`Weights.attention_output`)
HF_ATTENTION_OUTPUTS = {family: w.attention_output for family, w in _WEIGHTS.items()}
