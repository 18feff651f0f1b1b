"""GGUF tokenizers built without PyTorch, token for token against transformers' GGUF tokenizer."""

import gguf
import pytest

from tvjax.convert.tokenizer import DIGITS_FIRST, PRE_SPLITS, _byte_alphabet, gguf_tokenizer

TEXTS = ["Q: hot\nA: cold\n\nQ: big\nA:", "the theme 12345 x1y22", "it's WE'LL they'd", "  naïve 東京 🙂\t\r\n\n  x",
         "<|endoftext|>the<|im_start|>", "a\n\n\nb   c", "3.14 + 2,718 = 5.858"]
MERGES = ["Ġ t", "h e", "Ġt he", "t he", "1 2", "12 3", "Ġ Ġ", "ĠĠ Ġ", "' s", "Ċ Ċ", "e m", "the m"]


def _write_vocabulary(path, pre: str | None):
    """A GGUF with only a byte-level vocabulary: 256 bytes, a few merges, control and user-defined tokens."""
    alphabet = _byte_alphabet()
    merged = ["".join(m.split(" ")) for m in MERGES]
    tokens = ["<|endoftext|>", "<|im_start|>", *alphabet.values(), *merged, "<think>"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("gpt2")
    if pre is not None:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, *[1] * (len(tokens) - 3), 4])
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()


@pytest.mark.parametrize("pre", [None, "smollm", *PRE_SPLITS])
def test_byte_level_vocabulary_matches_transformers(tmp_path, pre):
    pytest.importorskip("torch")  # transformers' GGUF tokenizer needs it
    from transformers import AutoTokenizer

    path = tmp_path / "vocab.gguf"
    _write_vocabulary(path, pre)
    ours, reference = gguf_tokenizer(path), AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    for text in TEXTS:
        ids = ours(text)["input_ids"]
        if pre in DIGITS_FIRST and any(c.isdigit() for c in text):
            # transformers splits 'smollm' like GPT-2; llama.cpp and SmolLM's own tokenizer.json split digits first
            # (SmolLM's vocabulary has no multi-digit tokens, so on its real file the two agree: test_default)
            assert [ours.decode(i) for i in ours("12345")["input_ids"]] == list("12345")
            continue
        assert ids == reference(text)["input_ids"], text
        assert ours.decode(ids) == reference.decode(ids) == text
    assert (ours.bos_token, ours.eos_token) == ("<|im_start|>", "<|endoftext|>")
