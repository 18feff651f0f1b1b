"""tvjax.experiments: recipes, the fit's data, a sweep on a tiny model (its table and resume), the
oracle ceiling and the vocabulary task."""

import json

import pytest

import tvjax
from tvjax import experiments
from tvjax.experiments import (ORACLE, RECIPES, fit_data, oracle_ceiling, oracle_scores, parse_recipe, sweep,
                               sweep_table, vocabulary_task)
from tvjax.report import markdown_table


def test_recipes_parse_and_refuse_unknown_fields():
    assert parse_recipe(["published"]) == ("published", RECIPES["published"])
    assert parse_recipe(["mine", "steps=200", "positions=split", "n_prompts=8"]) == \
        ("mine", {"steps": 200, "positions": "split", "n_prompts": 8})
    with pytest.raises(ValueError, match="unknown recipe 'nope'"):
        parse_recipe(["nope"])
    with pytest.raises(ValueError, match="'stpes' is not a FitConfig field"):
        parse_recipe(["mine", "stpes=3"])
    assert parse_recipe(["ceiling", "fit_on_scored=true", "train_fraction=0.5"]) == \
        ("ceiling", {"fit_on_scored": True, "train_fraction": 0.5})
    for overrides in RECIPES.values():  # every named recipe is a valid FitConfig
        tvjax.FitConfig(**overrides)


def test_fit_data_takes_a_fraction_of_train_or_the_scored_split():
    task = tvjax.load_task("uppercase")
    half = fit_data(task, "valid", train_fraction=0.5, fit_on_scored=False)
    assert half.train == task.train[:len(task.train) // 2] and (half.valid, half.test) == (task.valid, task.test)
    assert fit_data(task, "valid", train_fraction=1.0, fit_on_scored=False) == task
    ceiling = fit_data(task, "test", train_fraction=1.0, fit_on_scored=True)
    assert ceiling.train == ceiling.valid == task.test
    with pytest.raises(ValueError, match="train_fraction must be in"):
        fit_data(task, "valid", train_fraction=0.0, fit_on_scored=False)


def test_a_sweep_scores_recipes_on_valid_and_resumes(tmp_path, tiny_lm, capsys):
    out = tmp_path / "sweep.json"
    tasks = [tvjax.load_task(name) for name in ("capitalize", "lowercase")]
    names = [t.name for t in tasks]
    recipes = dict(parse_recipe(words) for words in (
        ["small", "steps=2", "eval_every=1", "n_prompts=2", "shots=2"],
        ["ceiling", "steps=2", "eval_every=1", "n_prompts=2", "shots=2", "form=shift", "fit_on_scored=true"]))
    done = sweep(tiny_lm, tasks, recipes, out)
    assert done == json.loads(out.read_text())
    assert done["scored_on"] == "valid" and set(done) == {"scored_on", "zero_shot", "icl", "small", "ceiling"}
    assert set(done["small"]["scores"]) == set(done["ceiling"]["scores"]) == {"capitalize", "lowercase"}
    assert "small: fitted in" in capsys.readouterr().out
    table = sweep_table(done, names)
    assert "| small | steps=2 eval_every=1 n_prompts=2 shots=2 |" in table and "| icl | - |" in table
    done["small"]["fit_seconds"] = -1.0  # a rerun keeps what is there
    out.write_text(json.dumps(done))
    sweep(tiny_lm, tasks, recipes, out)
    assert json.loads(out.read_text())["small"]["fit_seconds"] == -1.0
    with pytest.raises(ValueError, match="holds scores on the valid split"):
        sweep(tiny_lm, tasks, recipes, out, split="test")


def test_means_are_extracted_once_per_setting(tiny_lm, tiny_task, monkeypatch):
    calls = []
    real = experiments.extract_means_many
    monkeypatch.setattr(experiments, "extract_means_many", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    means = experiments.Means(tiny_lm, [tiny_task])
    first = means(2, 2)
    assert means(2, 2) is first and means(2, 0).shape == first.shape == (1, 2, 4, 16)
    assert calls == [{"n_prompts": 2, "shots": 2, "seed": 0}, {"n_prompts": 2, "shots": 0, "seed": 0}]


def test_the_oracle_first_token_is_icl_first_token(tiny_lm, tiny_task, capsys):
    """Every head at the last token as under ICL makes the last token's state ICL's: the first
    generated token is ICL's (exact match may differ: the answer tokens do not see the shots)."""
    rows = oracle_ceiling(tiny_lm, [tiny_task], "valid", shots=2)
    assert list(rows) == [tiny_task.name] and "upper: oracle" in capsys.readouterr().out
    zero, icl, oracle = (rows[tiny_task.name][k] for k in ("zero_shot", "icl", ORACLE))
    assert (oracle["n"], oracle["skipped"]) == (icl["n"], 0) == (zero["n"], 0)
    assert oracle["first_token"] == icl["first_token"]
    assert 0 <= oracle["exact_match"] <= oracle["contains"] <= 1
    assert f"| {tiny_task.name} |" in markdown_table(rows, ("zero_shot", "icl", ORACLE))


def test_the_oracle_with_no_shots_is_zero_shot(tiny_lm, echo_task):
    """0-shot 'ICL' prompts are the zero-shot prompts: each head replaced by its own output changes nothing."""
    oracle = oracle_scores(tiny_lm, echo_task, "valid", shots=0)
    assert oracle.first_token == 1.0  # the echo task: the model's own first tokens, zero-shot accuracy 100%


def test_the_vocabulary_task_maps_vocabulary_words_to_their_first_letter(tiny_lm):
    task = vocabulary_task(tiny_lm.tokenizer, sizes=(30, 5, 10), seed=1)
    assert (len(task.train), len(task.valid), len(task.test)) == (30, 5, 10)
    pairs = task.train + task.valid + task.test
    assert len({x for x, _ in pairs}) == 45 and all(y == x[0] and x.isalpha() and 3 <= len(x) <= 10 for x, y in pairs)
    assert vocabulary_task(tiny_lm.tokenizer, sizes=(30, 5, 10), seed=1) == task
    assert vocabulary_task(tiny_lm.tokenizer, sizes=(30, 5, 10), seed=2) != task
    with pytest.raises(tvjax.TaskError, match="such words"):
        vocabulary_task(tiny_lm.tokenizer, sizes=(10 ** 6, 1, 1))
