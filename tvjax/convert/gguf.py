"""GGUF files (llama.cpp): dequantised into Hugging Face names and layout.

A GGUF becomes `(Hugging Face config dict, {hf_name: float32 array})`, so the same
weight table as for safetensors converts it. The config is the one transformers builds
for the same file (`AutoConfig.from_pretrained(dir, gguf_file=name)`), in transformers 5
style (`rope_parameters`, `layer_types`). What llama.cpp changed on the way in is undone:

- arch `llama`: the q/k rows are permuted for llama.cpp's interleaved rotary (undone here;
  no other architecture is permuted);
- arch `gemma2` / `gemma3`: every RMSNorm weight is stored as `1 + w` (Gemma scales by
  `1 + w`; llama.cpp folds the 1 in); 1 is subtracted again;
- keys llama.cpp does not write get transformers' (and llama.cpp's) defaults: Gemma 3's
  local rotary base (10000) and its sliding/global pattern (every 6th layer global, unless
  the file has `attention.sliding_window_pattern`), Gemma 2's alternation (even layers sliding).
  Where transformers ignores a key the file has (Gemma 2's soft caps, Qwen3's head_dim, Gemma 3's
  linear rope scaling) the file wins, and `query_pre_attn_scalar` is what llama.cpp scales by
  (head_dim; hidden / heads in the 27B models) rather than transformers' class default 256.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from tvjax.convert.hf import CheckpointError

GGUF_ARCHITECTURES = ("gemma2", "gemma3", "llama", "qwen2", "qwen3")  # llama.cpp writes Mistral as 'llama'
# GGUF architecture -> (Hugging Face model_type, architectures entry)
HF_MODEL_TYPES = {
    "llama": ("llama", "LlamaForCausalLM"), "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"), "gemma2": ("gemma2", "Gemma2ForCausalLM"),
    "gemma3": ("gemma3_text", "Gemma3ForCausalLM"),  # a gemma3 GGUF holds the text model only
}
# Quantisation types tvjax reads (and tests); others go through if the gguf package dequantises them.
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K")

_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_QK_NORMS = {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
_GEMMA_NORMS = {"post_attention_norm": "post_attention_layernorm", "ffn_norm": "pre_feedforward_layernorm",
                "post_ffw_norm": "post_feedforward_layernorm"}
# GGUF layer tensor names per architecture (the short name between `blk.{i}.` and `.weight`)
_ARCH_LAYER_NAMES = {
    "llama": _LAYER_NAMES, "qwen2": _LAYER_NAMES, "qwen3": {**_LAYER_NAMES, **_QK_NORMS},
    "gemma2": {**_LAYER_NAMES, **_GEMMA_NORMS}, "gemma3": {**_LAYER_NAMES, **_GEMMA_NORMS, **_QK_NORMS},
}
_NORM_PLUS_ONE = ("gemma2", "gemma3")
_REQUIRED = ("block_count", "embedding_length", "feed_forward_length", "attention.head_count")
_BIG_FIELDS = {f"tokenizer.ggml.{k}" for k in ("tokens", "merges", "token_type", "scores")}
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}


def _reader(path: Path):
    import gguf

    if not path.is_file():
        raise CheckpointError(f"GGUF file {path} does not exist")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable GGUF file (truncated?): {e}") from e


def hf_name(gguf_name: str, arch: str = "llama") -> str | None:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight` (None if unknown).

    The layer norms' names depend on `arch`: `ffn_norm` is Llama's `post_attention_layernorm`
    but Gemma's `pre_feedforward_layernorm`.
    """
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    names = _ARCH_LAYER_NAMES.get(arch, _LAYER_NAMES)
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in names:
        return f"model.layers.{parts[1]}.{names[parts[2]]}.{parts[3]}"
    return None


def read_gguf(path: str | os.PathLike, *, reader=None) -> tuple[dict, dict[str, np.ndarray]]:
    """Dequantise a GGUF file into `(hf_config, {hf_name: float32 array})`.

    Tensors are in Hugging Face layout (`nn.Linear` weights `[out, in]`), norms as
    transformers holds them (Gemma's without llama.cpp's `+ 1`). `reader`: the file's
    `gguf.GGUFReader` if already open (opening one parses the whole vocabulary: seconds).
    """
    path = Path(path)
    reader = reader or _reader(path)
    meta = {k: f.contents() for k, f in reader.fields.items() if k not in _BIG_FIELDS}
    arch = meta.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise CheckpointError(f"{path}: GGUF architecture {arch!r} is not supported; "
                              f"supported: {', '.join(GGUF_ARCHITECTURES)}")
    names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in names:
        raise CheckpointError(f"{path}: GGUF rope frequency factors (Llama 3.1 rope scaling) are not supported; "
                              "load the Hugging Face checkpoint instead")
    missing = [f"{arch}.{k}" for k in _REQUIRED if f"{arch}.{k}" not in meta]
    if missing or "tokenizer.ggml.tokens" not in reader.fields:
        raise CheckpointError(f"{path}: GGUF metadata lacks {missing or ['tokenizer.ggml.tokens']}")
    embed = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    vocab = int(embed.shape[1]) if embed is not None else len(reader.fields["tokenizer.ggml.tokens"].data)
    config = hf_config(meta, tie="output.weight" not in names, vocab=vocab, path=path)
    tensors = {}
    for t in tqdm(reader.tensors, desc=f"dequantising {path.name}", leave=False, disable=None):
        name = hf_name(t.name, arch)
        if name is None:
            raise CheckpointError(f"{path}: unexpected tensor {t.name!r} for GGUF architecture {arch!r}")
        value = _dequantize(t, path).reshape(tuple(int(d) for d in reversed(t.shape)))
        if arch == "llama" and t.name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = config["num_attention_heads"] if "attn_q" in t.name else config["num_key_value_heads"]
            value = unpermute_qk(value, heads)
        if arch in _NORM_PLUS_ONE and t.name.endswith("norm.weight"):
            value = value - np.float32(1)
        tensors[name] = value
    return config, tensors


def _dequantize(t, path: Path) -> np.ndarray:
    """One tensor's data as float32 (flat or block-shaped; the caller reshapes)."""
    import gguf
    from gguf.quants import dequantize

    kind = gguf.GGMLQuantizationType(t.tensor_type).name
    try:
        return np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
    except NotImplementedError as e:
        raise CheckpointError(
            f"{path}: tensor {t.name} uses quantisation type {kind}, which tvjax cannot dequantise ({e}); "
            f"supported types: {', '.join(SUPPORTED_TYPES)}; re-quantise the model to one of them "
            f"(llama.cpp's llama-quantize) or load the Hugging Face checkpoint"
        ) from e


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: rows `[N, H/2, 2]` back to `[N, 2, H/2]`."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _f32(value) -> float:
    """A float32 metadata value as the float it was written from (1e-06, not 9.99999997e-07)."""
    return float(str(np.float32(value)))


def hf_config(meta: dict, tie: bool, vocab: int, path: Path | str = "GGUF") -> dict:
    """The Hugging Face config dict of a GGUF file's metadata (`{key: field.contents()}`)."""
    arch = meta["general.architecture"]
    get = lambda key, default=None: meta.get(f"{arch}.{key}", default)
    model_type, architecture = HF_MODEL_TYPES[arch]
    D, N, L = get("embedding_length"), get("attention.head_count"), get("block_count")
    H = get("attention.key_length", get("rope.dimension_count", D // N))
    theta = _f32(get("rope.freq_base", 10000.0))
    config = {
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": vocab,
        "hidden_size": D,
        "intermediate_size": get("feed_forward_length"),
        "num_hidden_layers": L,
        "num_attention_heads": N,
        "num_key_value_heads": get("attention.head_count_kv", N),
        "head_dim": H,
        "rms_norm_eps": _f32(get("attention.layer_norm_rms_epsilon", 1e-6 if arch in _NORM_PLUS_ONE else 1e-5)),
        "max_position_embeddings": get("context_length", 2048),
        "tie_word_embeddings": tie,
    }
    rope = {"rope_type": "default", "rope_theta": theta, **_rope_scaling(get, path)}
    if arch in _NORM_PLUS_ONE:
        # llama.cpp scales queries by 1/sqrt(n_embd / n_head) in the 27B models (46 layers in Gemma 2,
        # 62 in Gemma 3; transformers' query_pre_attn_scalar 144 / 168), else by 1/sqrt(head_dim).
        big = L == {"gemma2": 46, "gemma3": 62}[arch]
        window = get("attention.sliding_window")
        local = _local_layers(get("attention.sliding_window_pattern"), L, 2 if arch == "gemma2" else 6)
        if arch == "gemma2":
            rope_parameters = rope
        else:
            rope_parameters = {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                               "full_attention": rope}
        config.update({
            "hidden_activation": "gelu_pytorch_tanh",
            "query_pre_attn_scalar": D // N if big else H,
            "sliding_window": int(window) if window is not None else 4096,
            "layer_types": ["sliding_attention" if x else "full_attention" for x in local],
            "rope_parameters": rope_parameters,
            "attn_logit_softcapping": _optional_f32(get("attn_logit_softcapping")),
            "final_logit_softcapping": _optional_f32(get("final_logit_softcapping")),
        })
    else:
        config.update({"hidden_act": "silu", "rope_parameters": rope})
        if arch == "qwen3":
            config.update({"use_sliding_window": False, "sliding_window": None, "layer_types": ["full_attention"] * L})
    for key, hf_key in (("bos", "bos"), ("eos", "eos"), ("padding", "pad"), ("unknown", "unk")):
        value = meta.get(f"tokenizer.ggml.{key}_token_id")
        if value is not None:
            config[f"{hf_key}_token_id"] = int(value)
    return config


def _local_layers(pattern, n_layers: int, default: int) -> list[bool]:
    """Which layers are sliding-window ones: llama.cpp's `sliding_window_pattern` (a period `n`: the
    last layer of every `n` is global; or one flag per layer), else the architecture's period."""
    if isinstance(pattern, list):
        return [bool(x) for x in pattern]
    n = int(pattern or default)
    return [i % n < n - 1 for i in range(n_layers)]


def _optional_f32(value) -> float | None:
    return None if value is None else _f32(value)


def _rope_scaling(get, path) -> dict:
    """`{'rope_type': 'linear', 'factor': f}` for linear scaling (Gemma 3 4B+), {} for none."""
    kind = get("rope.scaling.type")
    if kind in (None, "none"):
        return {}
    if kind == "linear" and get("rope.scaling.factor") is not None:
        return {"rope_type": "linear", "factor": _f32(get("rope.scaling.factor"))}
    raise CheckpointError(f"{path}: GGUF rope scaling {kind!r} is not supported (only 'linear'); "
                          "load the Hugging Face checkpoint instead")
