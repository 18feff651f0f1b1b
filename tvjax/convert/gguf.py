"""GGUF files (llama.cpp): dequantised into Hugging Face names and layout.

A GGUF becomes `(Hugging Face config dict, {hf_name: float32 array})`, so the same
weight table as for safetensors converts it. The config is the one transformers builds
for the same file (`AutoConfig.from_pretrained(dir, gguf_file=name)`), in transformers 5
style (`rope_parameters`, `layer_types`). Everything that differs by architecture (names,
metadata, fix-ups) is its `Gguf` record in `tvjax.convert.architectures`; this module reads
only the records. What llama.cpp changed on the way in is undone:

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

from tvjax.convert.architectures import GGUF_ARCHITECTURES
from tvjax.convert.hf import CheckpointError

# Quantisation types tvjax reads (and tests); others go through if the gguf package dequantises them.
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K")
_REQUIRED = ("block_count", "embedding_length", "feed_forward_length", "attention.head_count")
_BIG_FIELDS = {f"tokenizer.ggml.{k}" for k in ("tokens", "merges", "token_type", "scores")}


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
    spec = GGUF_ARCHITECTURES.get(arch, GGUF_ARCHITECTURES["llama"]).gguf
    if gguf_name in spec.global_tensors:
        return spec.global_tensors[gguf_name]
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in spec.layer_tensors:
        return f"model.layers.{parts[1]}.{spec.layer_tensors[parts[2]]}.{parts[3]}"
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
                              f"supported: {', '.join(sorted(GGUF_ARCHITECTURES))}")
    spec = GGUF_ARCHITECTURES[arch].gguf
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
        if spec.permute_qk and t.name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = config["num_attention_heads"] if "attn_q" in t.name else config["num_key_value_heads"]
            value = unpermute_qk(value, heads)
        if spec.norm_plus_one and t.name.endswith("norm.weight"):
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


def _as_written(value):
    """A float32 metadata value as the float it was written from (1e-06, not 9.99999997e-07); others as they are."""
    return float(str(np.float32(value))) if isinstance(value, float) else value


def hf_config(meta: dict, tie: bool, vocab: int, path: Path | str = "GGUF") -> dict:
    """The Hugging Face config dict of a GGUF file's metadata (`{key: field.contents()}`)."""
    arch = meta["general.architecture"]
    record = GGUF_ARCHITECTURES[arch]
    spec = record.gguf
    get = lambda key, default=None: _as_written(meta.get(f"{arch}.{key}", default))
    D, N, L = get("embedding_length"), get("attention.head_count"), get("block_count")
    config = {
        "architectures": [spec.hf_class],
        "model_type": record.model_type,
        "vocab_size": vocab,
        "hidden_size": D,
        "intermediate_size": get("feed_forward_length"),
        "num_hidden_layers": L,
        "num_attention_heads": N,
        "num_key_value_heads": get("attention.head_count_kv", N),
        "head_dim": get("attention.key_length", get("rope.dimension_count", D // N)),
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon", spec.rms_norm_eps),
        "max_position_embeddings": get("context_length", 2048),
        "tie_word_embeddings": tie,
        "rope_parameters": {"rope_type": "default", "rope_theta": get("rope.freq_base", 10000.0),
                            **_rope_scaling(get, path)},
    }
    config.update(spec.config(get, config))
    for key, hf_key in (("bos", "bos"), ("eos", "eos"), ("padding", "pad"), ("unknown", "unk")):
        value = meta.get(f"tokenizer.ggml.{key}_token_id")
        if value is not None:
            config[f"{hf_key}_token_id"] = int(value)
    return config


def _rope_scaling(get, path) -> dict:
    """`{'rope_type': 'linear', 'factor': f}` for linear scaling (Gemma 3 4B+), {} for none."""
    kind = get("rope.scaling.type")
    if kind in (None, "none"):
        return {}
    if kind == "linear" and get("rope.scaling.factor") is not None:
        return {"rope_type": "linear", "factor": get("rope.scaling.factor")}
    raise CheckpointError(f"{path}: GGUF rope scaling {kind!r} is not supported (only 'linear'); "
                          "load the Hugging Face checkpoint instead")
