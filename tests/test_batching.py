from types import SimpleNamespace

import numpy as np
import pytest

from tvjax.batching import bucket_length, pad_id, pad_left


def test_buckets_are_few_and_large_enough():
    sizes = {bucket_length(n) for n in range(1, 1025)}
    assert sorted(sizes) == [8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256,
                             320, 384, 448, 512, 640, 768, 896, 1024]
    assert all(n <= bucket_length(n) <= max(n + 7, n * 5 // 4) for n in range(1, 5000))


def test_pad_left_puts_every_last_token_in_the_last_column():
    tokens, mask = pad_left([[5, 6, 7], [8]], pad_id=0)
    assert tokens.shape == (2, 8) and tokens.dtype == np.int32
    np.testing.assert_array_equal(tokens[:, -1], [7, 8])
    np.testing.assert_array_equal(mask.sum(1), [3, 1])
    assert not mask[:, :5].any()


def test_pad_left_rejects_bad_input():
    with pytest.raises(ValueError, match="does not fit"):
        pad_left([[1] * 20], length=16)
    with pytest.raises(ValueError, match="no empty"):
        pad_left([[1], []])


def test_pad_id_is_the_tokenizers_or_zero():
    assert pad_id(SimpleNamespace(pad_token_id=2)) == 2
    assert pad_id(SimpleNamespace(pad_token_id=None)) == 0
