"""Left-padded token batches with bucketed lengths (few distinct shapes, few compiles)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

MIN_BUCKET = 8


def bucket_length(n: int, minimum: int = MIN_BUCKET) -> int:
    """Smallest length >= n in {8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, ...}.

    Four sizes per doubling (steps of a quarter of the power of two below n, at least 8):
    above 32 tokens padding adds under a quarter of n, and a few shapes (compiles) cover
    every length.
    """
    if n <= minimum:
        return minimum
    power = 1 << (n - 1).bit_length() - 1  # the largest power of two below n
    step = max(8, power // 4)
    return -(-n // step) * step


def pad_left(sequences: Sequence[Sequence[int]], pad_id: int = 0, length: int | None = None):
    """Left-pad token lists to one bucketed length.

    Returns:
      tokens `[B, T]` int32 and mask `[B, T]` bool (True on real tokens); the last
      column holds every row's last token.
    """
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("pad_left needs at least one sequence and no empty sequences")
    longest = max(len(s) for s in sequences)
    length = bucket_length(longest) if length is None else length
    if longest > length:
        raise ValueError(f"a sequence of {longest} tokens does not fit length {length}")
    tokens = np.full((len(sequences), length), pad_id, np.int32)
    mask = np.zeros((len(sequences), length), bool)
    for row, seq in enumerate(sequences):
        tokens[row, length - len(seq):] = seq
        mask[row, length - len(seq):] = True
    return tokens, mask


def pad_id(tokenizer) -> int:
    """The token that fills padding: the tokenizer's `pad_token_id`, or 0 when it has none.

    Padded positions are masked out, so any id in the vocabulary would do; one choice keeps
    every batch of a tokenizer (and the compiled programs that see them) identical.
    """
    return 0 if tokenizer.pad_token_id is None else tokenizer.pad_token_id


def encode(tokenizer, texts: Sequence[str], length: int | None = None):
    """Tokenise `texts` (with the tokenizer's own special tokens) into a left-padded batch."""
    return pad_left([tokenizer(t)["input_ids"] for t in texts], pad_id(tokenizer), length)


def chunks(items: list, size: int):
    """`items` in chunks of exactly `size` (the last one padded by repeating its first item), with
    the number of real items in each: fixed batch shapes mean one compile."""
    for start in range(0, len(items), size):
        chunk = items[start:start + size]
        yield chunk + [chunk[0]] * (size - len(chunk)), len(chunk)
