"""Tokenizers from a GGUF file's own vocabulary, built with the `tokenizers` library.

No PyTorch: transformers' own GGUF tokenizer loader imports torch, so byte-level BPE
vocabularies (`tokenizer.ggml.model == "gpt2"`: SmolLM2, Llama 3, Qwen2, GPT-2 files) are
built here from the tokens, merges and token types the file holds, split the way
llama.cpp splits the file's `tokenizer.ggml.pre`. Other vocabularies (sentencepiece) go
through transformers, which needs PyTorch for them.
"""

from __future__ import annotations

from pathlib import Path

from tvjax.convert.gguf import _reader
from tvjax.convert.hf import CheckpointError

CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types
# GPT-2's split, the default of a byte-level vocabulary.
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# Splits that differ from GPT-2's, by `tokenizer.ggml.pre` (llama.cpp's names).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_SPLITS = {"llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT}
DIGITS_FIRST = {"smollm"}  # every digit its own piece, then GPT-2's split (as the original tokenizer.json)


def gguf_tokenizer(path: str | Path):
    """The tokenizer a GGUF file describes, as a transformers fast tokenizer."""
    path = Path(path)
    fields = _reader(path).fields
    meta = {k: fields[k].contents() for k in fields if k.startswith("tokenizer.")}
    if meta.get("tokenizer.ggml.model") != "gpt2":
        return _transformers_tokenizer(path)
    tokens, token_types = meta["tokenizer.ggml.tokens"], meta.get("tokenizer.ggml.token_type") or []
    from transformers import PreTrainedTokenizerFast

    special = {name: tokens[meta[f"tokenizer.ggml.{key}"]] for name, key in
               (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"), ("unk_token", "unknown_token_id"),
                ("pad_token", "padding_token_id")) if f"tokenizer.ggml.{key}" in meta}
    return PreTrainedTokenizerFast(
        tokenizer_object=byte_level_bpe(tokens, meta.get("tokenizer.ggml.merges") or [], token_types,
                                        meta.get("tokenizer.ggml.pre")),
        chat_template=meta.get("tokenizer.chat_template"), **special)


def byte_level_bpe(tokens: list[str], merges: list[str], token_types: list[int], pre: str | None):
    """A byte-level BPE `tokenizers.Tokenizer`: control tokens special, user-defined ones whole."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    alphabet = _byte_alphabet()
    spelled = set(alphabet.values())
    vocab = {(t if set(t) <= spelled else "".join(alphabet[b] for b in t.encode())): i for i, t in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], fuse_unk=False))
    split = pre_tokenizers.Split(Regex(PRE_SPLITS.get(pre, GPT2_SPLIT)), behavior="isolated")
    steps = [split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    if pre in DIGITS_FIRST:
        steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tokenizer.decoder = decoders.ByteLevel()
    kinds = list(zip(tokens, token_types))
    # A control token spelled outside the byte alphabet is a llama.cpp mislabel: left as it is.
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                  for t, kind in kinds if kind == CONTROL and set(t) <= spelled])
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False)
                          for t, kind in kinds if kind == USER_DEFINED and t in vocab])
    return tokenizer


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's printable spelling of every byte (byte-level BPE vocabularies are written in it)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = (b for b in range(256) if b not in printable)
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(extra)}}


def _transformers_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (ImportError, ModuleNotFoundError) as e:
        raise CheckpointError(
            f"the tokenizer of {path.name} is not byte-level BPE; reading it needs PyTorch (transformers' GGUF "
            f"support): pip install 'tvjax[torch]' ({e})") from e
