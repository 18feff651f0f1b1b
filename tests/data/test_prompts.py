import pytest

from tvjax.data import Task, TaskError, Template, build_texts, prompts_for, tokenize


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from tvjax.convert.default import default_model_dir

    return AutoTokenizer.from_pretrained(str(default_model_dir()))


def test_template_writes_demonstrations_and_queries():
    t = Template()
    assert t.demonstration(("hot", "cold")) == "Q: hot\nA: cold\n\n"
    assert t.query("fast") == ("Q: fast\nA:", " ")
    with pytest.raises(TaskError, match="must contain"):
        Template("{output} before {input}")


def test_icl_prompts_use_other_train_pairs():
    pool = [(str(i), str(i + 1)) for i in range(20)]
    texts = build_texts(Template(), pool[:3], shots=5, pool=pool, seed=0)
    for prompt, answer, pair in texts:
        assert prompt.count("Q: ") == 6 and prompt.endswith(f"Q: {pair[0]}\nA:")
        assert f"Q: {pair[0]}\nA: {pair[1]}" not in prompt and answer == " " + pair[1]


def test_word_answers_keep_their_leading_space(tokenizer):
    [prompt], skipped = tokenize(tokenizer, build_texts(Template(), [("fast", "slow")], 0, [], 0))
    assert not skipped and tokenizer.decode(prompt.answer[:1]) == " slow"
    assert tokenizer.decode(prompt.ids).endswith("A:") and prompt.lead == ""


def test_numeric_answers_move_the_bare_space_into_the_prompt(tokenizer):
    # SmolLM2 writes " 42" as ' ', '4', '2': the informative first answer token is '4'.
    [prompt], _ = tokenize(tokenizer, build_texts(Template(), [("41", "42")], 0, [], 0))
    assert tokenizer.decode(prompt.answer) == "42" and tokenizer.decode(prompt.answer[:1]) == "4"
    assert tokenizer.decode(prompt.ids).endswith("A: ") and prompt.lead == " "


def test_the_stop_token_is_the_one_between_demonstrations(tokenizer):
    # SmolLM2 reads "\n\n" as one token at the end of a text and as two "\n" before more text:
    # the stop is what follows an answer inside an ICL prompt, where the model learns to end it.
    pairs = [("cold", "hot"), ("big", "small")]
    [prompt], _ = tokenize(tokenizer, build_texts(Template(), pairs[:1], 0, [], 0), Template())
    icl = tokenizer("".join(Template().demonstration(p) for p in pairs))["input_ids"]
    after_answer = len(prompt.ids) + len(prompt.answer)
    assert icl[:after_answer] == prompt.ids + prompt.answer and prompt.stop == (icl[after_answer],)
    assert tokenizer.decode(prompt.stop) == "\n" != tokenizer.decode(tokenizer("\n\n")["input_ids"][:1])
    [unended], _ = tokenize(tokenizer, build_texts(Template("{input}={output}"), pairs[:1], 0, [], 0),
                            Template("{input}={output}"))
    assert unended.stop == ()  # nothing follows the answer in this template's demonstrations


def test_answers_that_do_not_tokenise_are_reported(tokenizer):
    texts = build_texts(Template("{input}={output}"), [("x", "y"), ("z", "  "), ("w", "=")], 0, [], 0)
    prompts, skipped = tokenize(tokenizer, texts)
    assert [p.pair for p in prompts] == [("x", "y")]
    reasons = dict(skipped)
    assert "whitespace" in reasons[("z", "  ")]
    assert "merges with the end of the prompt" in reasons[("w", "=")]  # '=' + '=' is one token '=='


def test_prompts_for_checks_the_shots(tokenizer):
    task = Task.from_pairs("small", [(str(i), str(i)) for i in range(6)], seed=0)
    with pytest.raises(TaskError, match="10-shot"):
        prompts_for(tokenizer, task, "test", 10)


def test_prompts_for_reports_skipped_pairs_and_fails_when_none_is_left(tokenizer):
    task = Task.from_pairs("eq", [(str(i), "=") for i in range(8)], seed=0)
    with pytest.raises(TaskError, match="no pair has an answer that tokenises"), pytest.warns(UserWarning):
        prompts_for(tokenizer, task, "test", 0, template=Template("{input}={output}"))
    mixed = Task.from_pairs("mixed", [(str(i), "=" if i % 2 else "y") for i in range(20)], seed=0)
    with pytest.warns(UserWarning, match="pairs skipped, their answers do not tokenise"):
        prompts, skipped = prompts_for(tokenizer, mixed, "train", 0, template=Template("{input}={output}"))
    assert prompts and skipped


def test_site_demos_replay_the_soft_injection_code_and_its_digit_answers():
    """Template(demos='site') draws what SITE's own code draws at batch 1 (its global `random`,
    seeded: a `choice` of its one task, then `sample(range(len(train)), shots + 1)`, the query
    not excluded), and writes a digit answer right after 'A:'."""
    import random

    pool = [(f"w{i}", f"W{i}") for i in range(30)] + [("ten", "10")]
    queries = [("w3", "W3"), ("nine", "9"), ("w7", "W7")]
    random.seed(5)  # SITE's protocol, as its code runs it (preprocess.py)
    expected = []
    for _ in queries:
        random.choice(list(enumerate([pool])))
        expected.append([pool[i] for i in random.sample(range(len(pool)), 4)[:-1]])
    texts = build_texts(Template(demos="site"), queries, 3, pool, seed=5)
    for (prompt, answer, pair), demos in zip(texts, expected):
        written = [(d[0], d[1]) for d in demos]
        assert prompt == "".join(f"Q: {x}\nA:{y}\n\n" if y.isdigit() else f"Q: {x}\nA: {y}\n\n"
                                 for x, y in written) + f"Q: {pair[0]}\nA:"
        assert answer == (pair[1] if pair[1].isdigit() else " " + pair[1])
    assert build_texts(Template(), queries, 3, pool, seed=5) != texts  # the default draws otherwise
    with pytest.raises(TaskError, match="demos='paper'"):
        Template(demos="paper")
