import jax.numpy as jnp
import numpy as np

import tvjax
from tvjax.data import prompts_for
from tvjax.evaluation import answer_text, evaluate_many, first_token_scores


def test_the_models_own_answers_score_100_percent(tiny_lm, echo_task):
    scores = tvjax.evaluate(tiny_lm, echo_task, batch_size=4)
    assert scores.n == len(echo_task.test) and scores.skipped == 0
    assert scores.first_token == 1.0


def test_scores_equal_a_direct_count(tiny_lm, echo_task):
    config, params, tokenizer = tiny_lm
    c = config
    blend = tvjax.HeadBlend(jnp.full((c.n_layers, c.n_heads), 3.0),
                            jnp.asarray(np.random.default_rng(0).normal(size=(c.n_layers, c.n_heads, c.head_dim)),
                                        jnp.float32))
    for kwargs in ({"shots": 3}, {"intervention": blend}):
        scores = tvjax.evaluate(tiny_lm, echo_task, batch_size=4, **kwargs)
        prompts, _ = prompts_for(tokenizer, echo_task, "test", kwargs.get("shots", 0))
        hits = 0
        for p in prompts:
            logits = tvjax.forward(params, jnp.asarray([p.ids]), config=config,
                                   intervention=kwargs.get("intervention")).logits
            hits += int(np.argmax(logits[0, -1]) == p.answer[0])
        assert scores.first_token == hits / len(prompts)
        first = tvjax.evaluate(tiny_lm, echo_task, batch_size=4, first_token_only=True, **kwargs)
        assert (first.first_token, first.exact_match, first.contains) == (scores.first_token, None, None)
    assert scores.first_token < 1.0, "this blend should change some answers"
    many = evaluate_many(tiny_lm, [echo_task, echo_task], interventions=[blend, blend], batch_size=8, first_token_only=True)
    assert many == [first, first]
    shared = first_token_scores(tiny_lm, echo_task, [None, blend, None], chunk=5)  # one pass, 3 chunks
    assert shared == [tvjax.evaluate(tiny_lm, echo_task, first_token_only=True), first, shared[0]]


def test_answer_text_takes_the_first_line_before_eos(tiny_lm):
    tokenizer = tiny_lm.tokenizer
    ids = tokenizer(" slow\n\nQ: big")["input_ids"]
    assert answer_text(tokenizer, np.asarray(ids), eos_ids=(2,)) == "slow"
    assert answer_text(tokenizer, np.asarray(tokenizer(" Paris")["input_ids"] + [2, 5, 6]), eos_ids=(2,)) == "Paris"


def test_a_row_scores_first_token_exact_match_and_contains(tiny_lm):
    from tvjax.data.prompts import Prompt
    from tvjax.evaluation import score_row

    tokenizer = tiny_lm.tokenizer
    paris = tokenizer(" Paris")["input_ids"]
    prompt = Prompt([5, 6], paris, ("France", "Paris"))
    rows = {" Paris\n\nQ: Spain": [1, 1, 1], " Paris, France": [1, 0, 1], " Pari": [0, 0, 0], " London": [0, 0, 0],
            " Parisian\nQ": [1, 0, 1]}
    for text, expected in rows.items():
        row = np.asarray(tokenizer(text)["input_ids"] + [2, 7])
        assert score_row(tokenizer, row, prompt, (2,)).tolist() == expected, text


def _generated(model, task, shots: int = 0, intervention=None) -> list[float]:
    """`[first token, exact, contains]` of `task`'s test split with every answer generated."""
    from tvjax.batching import pad_id, pad_left
    from tvjax.evaluation import answer_budget, score_row

    config, params, tokenizer = model
    prompts, _ = prompts_for(tokenizer, task, "test", shots)
    tokens, mask = pad_left([p.ids for p in prompts], pad_id(tokenizer))
    new = tvjax.generate(params, tokens, config=config, mask=mask, max_new_tokens=answer_budget(prompts),
                         intervention=intervention)
    return np.mean([score_row(tokenizer, row, p, config.eos_ids) for p, row in zip(prompts, new)], 0).tolist()


def test_scores_are_those_of_generating_every_answer(tiny_lm, echo_task, tiny_task):
    c = tiny_lm.config
    mu = jnp.asarray(np.random.default_rng(1).normal(size=(c.n_layers, c.n_heads, c.head_dim)), jnp.float32)
    blends = [None, tvjax.HeadBlend(jnp.full((c.n_layers, c.n_heads), 2.0), mu),
              tvjax.HeadBlend(jnp.zeros((c.n_layers, c.n_heads)), mu, jnp.full((c.n_layers, c.n_heads), 1.0))]
    for task in (echo_task, tiny_task):
        for blend in blends:
            s = evaluate_many(tiny_lm, [task], interventions=[blend], batch_size=8)[0]
            assert [s.first_token, s.exact_match, s.contains] == _generated(tiny_lm, task, 0, blend)
    s = tvjax.evaluate(tiny_lm, echo_task, shots=2, batch_size=8)
    assert [s.first_token, s.exact_match, s.contains] == _generated(tiny_lm, echo_task, 2)

