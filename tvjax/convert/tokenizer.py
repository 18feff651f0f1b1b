"""Tokenizers from a GGUF file's own vocabulary, built with the `tokenizers` library.

No PyTorch: transformers' own GGUF tokenizer loader imports torch, so two kinds of
vocabulary are built here from the tokens, merges, scores and token types the file holds,
as transformers builds them:

- byte-level BPE (`tokenizer.ggml.model == "gpt2"`: SmolLM2, Llama 3, Qwen2/3, GPT-2 files),
  split the way llama.cpp splits the file's `tokenizer.ggml.pre`;
- Gemma's sentencepiece BPE (`tokenizer.ggml.model == "llama"` in a gemma/gemma2/gemma3
  file): byte fallback, spaces written '▁', no prefix space, merges rebuilt from the
  vocabulary in file order (the file has none).

Other vocabularies (other sentencepiece files) go through transformers, which needs
PyTorch for them.
"""

from __future__ import annotations

from pathlib import Path

from tvjax.convert.architectures import GGUF_ARCHITECTURES
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


def gguf_tokenizer(path: str | Path, *, reader=None):
    """The tokenizer a GGUF file describes, as a transformers fast tokenizer.

    `reader`: the file's `gguf.GGUFReader` if already open.
    """
    path = Path(path)
    fields = (reader or _reader(path)).fields
    meta = {k: fields[k].contents() for k in fields if k.startswith("tokenizer.")}
    kind = meta.get("tokenizer.ggml.model")
    arch = fields["general.architecture"].contents() if "general.architecture" in fields else None
    if kind == "llama" and arch in GGUF_ARCHITECTURES and GGUF_ARCHITECTURES[arch].gguf.sentencepiece:
        return _gemma_tokenizer(meta)
    if kind != "gpt2":
        return _transformers_tokenizer(path)
    tokens, token_types = meta["tokenizer.ggml.tokens"], meta.get("tokenizer.ggml.token_type") or []
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=byte_level_bpe(tokens, meta.get("tokenizer.ggml.merges") or [], token_types,
                                        meta.get("tokenizer.ggml.pre")),
        chat_template=meta.get("tokenizer.chat_template"), **_special_tokens(meta))


def _special_tokens(meta: dict) -> dict[str, str]:
    tokens = meta["tokenizer.ggml.tokens"]
    return {name: tokens[meta[f"tokenizer.ggml.{key}"]] for name, key in
            (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"), ("unk_token", "unknown_token_id"),
             ("pad_token", "padding_token_id")) if f"tokenizer.ggml.{key}" in meta}


def _gemma_tokenizer(meta: dict):
    """Gemma's tokenizer as transformers' `GemmaTokenizer` over the file's vocabulary (BOS added if the file says)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    special = _special_tokens(meta)
    tokenizer = sentencepiece_bpe(meta["tokenizer.ggml.tokens"], meta.get("tokenizer.ggml.token_type") or [],
                                  unk=special.get("unk_token", "<unk>"))
    bos = special.get("bos_token")
    if meta.get("tokenizer.ggml.add_bos_token", True) and bos is not None:
        bos_id = tokenizer.token_to_id(bos)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, chat_template=meta.get("tokenizer.chat_template"),
                                   **special)


def sentencepiece_bpe(tokens: list[str], token_types: list[int], unk: str = "<unk>"):
    """Gemma's sentencepiece BPE as a `tokenizers.Tokenizer`: control tokens special, user-defined ones whole.

    Merges are every split of a token into two vocabulary tokens, best first in the order
    the file lists the tokens (a Gemma file's scores do not follow its merge order), a
    token's splits longest left piece first (transformers' order). A token of spaces is
    stored with real spaces; it is looked up as '▁'s, so it is respelled.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers

    spelled = ["\u2581" * len(t) if " " in t and not t.strip() else t for t in tokens]
    vocab = {t: i for i, t in enumerate(spelled)}
    merges = []
    for token, rank in vocab.items():
        merges.extend((rank, -k, k - len(token), token[:k], token[k:]) for k in range(1, len(token))
                      if token[:k] in vocab and token[k:] in vocab)
    merges.sort()
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[m[3:] for m in merges], unk_token=unk,
                                     fuse_unk=True, byte_fallback=True))
    tokenizer.normalizer = normalizers.Replace(" ", "\u2581")
    tokenizer.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tokenizer.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    kinds = list(zip(tokens, token_types))  # as the file spells them (a user-defined token of spaces is left out)
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                  for t, kind in kinds if kind == CONTROL])
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False)
                          for t, kind in kinds if kind == USER_DEFINED and t in vocab])
    return tokenizer


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
