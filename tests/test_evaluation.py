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
