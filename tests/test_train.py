"""The shared training loop's pieces: seeded batches."""

import numpy as np

from tvjax.train import batch_indices, drawn_rows


def test_batch_indices_cover_each_epoch_once():
    steps = [batch_indices(10, 4, s, seed=0) for s in range(5)]  # 20 rows = 2 epochs
    flat = np.concatenate(steps)
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    np.testing.assert_array_equal(batch_indices(10, 4, 3, seed=0), steps[3])


def test_drawn_rows_are_the_rows_the_steps_draw():
    for n, batch, steps in ((50, 4, 5), (50, 4, 13), (7, 3, 10), (9, 1, 9)):
        seen = np.unique(np.concatenate([batch_indices(n, batch, step, 3) for step in range(steps)]))
        np.testing.assert_array_equal(drawn_rows(n, batch, steps, 3), seen)
