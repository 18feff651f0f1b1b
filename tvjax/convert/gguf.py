"""GGUF files (llama.cpp): dequantised into Hugging Face names and layout.

A GGUF becomes `(Hugging Face config dict, {hf_name: float32 array})`, so the same
weight table as for safetensors converts it. llama.cpp stores the q/k rows of
Llama-family models permuted for its interleaved rotary; that permutation is undone.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from tvjax.convert.hf import CheckpointError

GGUF_ARCHITECTURES = ("llama", "qwen2")  # llama.cpp writes Mistral as 'llama'
_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
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


def hf_name(gguf_name: str) -> str | None:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight` (None if unknown)."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    return None


def read_gguf(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """Dequantise a GGUF file into `(hf_config, {hf_name: float32 array})`."""
    import gguf
    from gguf.quants import dequantize

    path = Path(path)
    reader = _reader(path)
    meta = {k: f.contents() for k, f in reader.fields.items() if k not in _BIG_FIELDS}
    arch = meta.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise CheckpointError(f"{path}: GGUF architecture {arch!r} is not supported; "
                              f"supported: {', '.join(GGUF_ARCHITECTURES)}")
    names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in names or f"{arch}.rope.scaling.type" in meta:
        raise CheckpointError(f"{path}: GGUF rope scaling is not supported; load the Hugging Face checkpoint instead")
    missing = [f"{arch}.{k}" for k in _REQUIRED if f"{arch}.{k}" not in meta]
    if missing or "tokenizer.ggml.tokens" not in reader.fields:
        raise CheckpointError(f"{path}: GGUF metadata lacks {missing or ['tokenizer.ggml.tokens']}")
    config = _hf_config(meta, arch, tie="output.weight" not in names,
                        vocab=len(reader.fields["tokenizer.ggml.tokens"].data))
    tensors = {}
    for t in tqdm(reader.tensors, desc=f"dequantising {path.name}", leave=False, disable=None):
        name = hf_name(t.name)
        if name is None:
            raise CheckpointError(f"{path}: unexpected tensor {t.name!r}")
        try:
            value = dequantize(t.data, t.tensor_type).astype(np.float32)
        except NotImplementedError as e:
            raise CheckpointError(
                f"{path}: tensor {t.name} uses quantisation type {gguf.GGMLQuantizationType(t.tensor_type).name}, "
                f"which the gguf package cannot dequantise ({e}); convert the model with another quantisation"
            ) from e
        value = value.reshape(tuple(int(d) for d in reversed(t.shape)))
        if arch == "llama" and t.name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = config["num_attention_heads"] if "attn_q" in t.name else config["num_key_value_heads"]
            value = unpermute_qk(value, heads)
        tensors[name] = value
    return config, tensors


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: rows `[N, H/2, 2]` back to `[N, 2, H/2]`."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_config(meta: dict, arch: str, tie: bool, vocab: int) -> dict:
    get = lambda key, default=None: meta.get(f"{arch}.{key}", default)
    n_heads = get("attention.head_count")
    config = {
        "model_type": arch,
        "vocab_size": vocab,
        "hidden_size": get("embedding_length"),
        "intermediate_size": get("feed_forward_length"),
        "num_hidden_layers": get("block_count"),
        "num_attention_heads": n_heads,
        "num_key_value_heads": get("attention.head_count_kv", n_heads),
        "head_dim": get("attention.key_length", get("embedding_length") // n_heads),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "max_position_embeddings": get("context_length", 2048),
        "tie_word_embeddings": tie,
        "hidden_act": "silu",
    }
    for key in ("bos", "eos", "padding"):
        value = meta.get(f"tokenizer.ggml.{key}_token_id")
        if value is not None:
            config[f"{'pad' if key == 'padding' else key}_token_id"] = int(value)
    return config
