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


def _quadratic_loop(objectives, patience, steps=None, checkpoints=None, state=None):
    """`loop` over a state counting steps, whose validation objective at step n is `objectives[n]`
    (one list per run)."""
    import jax.numpy as jnp

    from tvjax.train import loop

    step = lambda state, n: ({"n": state["n"] + 1}, jnp.zeros(()))
    validate = lambda state: ([o[int(state["n"][0])] for o in objectives],
                              {"objective": [o[int(state["n"][0])] for o in objectives]})
    return loop(step, validate, state or {"n": jnp.zeros((len(objectives),))}, steps=steps or len(objectives[0]) - 1,
                eval_every=1, keep=lambda state: state["n"], desc="test", checkpoints=checkpoints, patience=patience)


def test_patience_stops_once_every_run_has_gone_stale():
    falls_then_rises = [5, 4, 3, 4, 5, 6, 7, 8, 9, 9]  # best at step 2
    keeps_falling = [9, 8, 7, 6, 5, 4, 3, 2, 1, 1]  # best at step 8 (the last strict fall)
    trained = _quadratic_loop([falls_then_rises], patience=2)
    assert trained.best_step == [2] and trained.history[-1]["step"] == 4  # steps 3 and 4 did not improve
    assert _quadratic_loop([falls_then_rises], patience=0).history[-1]["step"] == 9  # 0: never stops
    both = _quadratic_loop([falls_then_rises, keeps_falling], patience=2)
    assert both.best_step == [2, 8] and both.history[-1]["step"] == 9  # the other run kept improving

