"""REINFORCE head selection: the gradient estimator, and the search's mechanics on a tiny model."""

import jax
import jax.numpy as jnp
import numpy as np

import tvjax
from tvjax.reinforce import ReinforceConfig, score_function_gradient, select_heads

FAST = ReinforceConfig(steps=4, samples=4, eval_every=2, learning_rate=0.5)


def test_gradient_is_the_standardised_score_function_and_points_to_rewarding_heads():
    key = jax.random.key(0)
    logits = jax.random.normal(key, (3, 4))
    masks = jax.random.bernoulli(jax.random.key(1), 0.5, (64, 3, 4))
    rewards = masks[:, 1, 2].astype(jnp.float32) + 0.1 * jax.random.normal(jax.random.key(2), (64,))
    grad = jax.jit(score_function_gradient)(logits, masks, rewards)
    assert grad.shape == (3, 4)
    assert grad[1, 2] > 0 and np.argmax(np.abs(grad)) == 1 * 4 + 2  # the rewarding head stands out
    advantage = (rewards - rewards.mean()) / (rewards.std() + 1e-6)

    def surrogate(logits):  # mean_s a_s log p(m_s): its gradient is the estimator
        log_p = jnp.where(masks, jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)).sum((1, 2))
        return jnp.mean(advantage * log_p)

    np.testing.assert_allclose(grad, jax.jit(jax.grad(surrogate))(logits), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(jax.jit(score_function_gradient)(logits, masks, 3 * rewards + 1), grad, rtol=1e-4,
                               atol=1e-6)  # standardised: the reward's scale and offset do not matter


def test_search_is_seeded_and_returns_a_hard_head_set(tiny_lm, tiny_task):
    mu = tvjax.extract_means(tiny_lm, tiny_task, n_prompts=4, shots=3)
    first = select_heads(tiny_lm, tiny_task, mu, FAST)
    again = select_heads(tiny_lm, tiny_task, mu, FAST)
    np.testing.assert_array_equal(first.probabilities, again.probabilities)
    assert [h["valid_loss"] for h in first.history] == [h["valid_loss"] for h in again.history]
    assert [h["step"] for h in first.history] == [0, 2, 4]
    assert first.probabilities.shape == (2, 4) and first.heads.dtype == bool
    np.testing.assert_array_equal(first.heads, first.probabilities > 0.5)
    np.testing.assert_array_equal(first.blend.theta, np.where(first.heads, np.inf, -np.inf))
    np.testing.assert_array_equal(first.blend.mu, mu)
    assert first.best_valid_loss == min(h["valid_loss"] for h in first.history)
    other = select_heads(tiny_lm, tiny_task, mu, ReinforceConfig(**{**FAST.__dict__, "seed": 1}))
    assert not np.array_equal(other.probabilities, first.probabilities)
    sparse = select_heads(tiny_lm, tiny_task, mu, ReinforceConfig(**{**FAST.__dict__, "sparsity": 100.0}))
    assert not sparse.heads.any()  # every head costs more than it could gain
