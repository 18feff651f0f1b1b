"""scripts/sweep_fit.py: recipes from the command line, a sweep on a tiny model, its table and resume."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))


def test_recipes_parse_and_refuse_unknown_fields():
    from sweep_fit import RECIPES, recipe

    assert recipe(["published"]) == ("published", RECIPES["published"])
    assert recipe(["mine", "steps=200", "positions=split", "n_prompts=8"]) == \
        ("mine", {"steps": 200, "positions": "split", "n_prompts": 8})
    with pytest.raises(SystemExit, match="unknown recipe 'nope'"):
        recipe(["nope"])
    with pytest.raises(SystemExit, match="'stpes' is not a FitConfig field"):
        recipe(["mine", "stpes=3"])
    assert recipe(["ceiling", "fit_on_scored=true", "train_fraction=0.5"]) == \
        ("ceiling", {"fit_on_scored": True, "train_fraction": 0.5})


def test_fit_data_takes_a_fraction_of_train_or_the_scored_split():
    import tvjax
    from sweep_fit import fit_data

    task = tvjax.load_task("uppercase")
    half = fit_data(task, "valid", train_fraction=0.5, fit_on_scored=False)
    assert half.train == task.train[:len(task.train) // 2] and (half.valid, half.test) == (task.valid, task.test)
    assert fit_data(task, "valid", train_fraction=1.0, fit_on_scored=False) == task
    ceiling = fit_data(task, "test", train_fraction=1.0, fit_on_scored=True)
    assert ceiling.train == ceiling.valid == task.test
    with pytest.raises(SystemExit, match="train_fraction must be in"):
        fit_data(task, "valid", train_fraction=0.0, fit_on_scored=False)


def test_a_sweep_scores_recipes_on_valid_and_resumes(tmp_path, tiny_lm_dir, monkeypatch, capsys):
    import sweep_fit

    out = tmp_path / "sweep.json"
    argv = ["sweep_fit.py", "--model", str(tiny_lm_dir), "--tasks", "capitalize,lowercase", "--out", str(out),
            "--recipe", "small", "steps=2", "eval_every=1", "n_prompts=2", "shots=2",
            "--recipe", "ceiling", "steps=2", "eval_every=1", "n_prompts=2", "shots=2", "form=shift", "fit_on_scored=true"]
    monkeypatch.setattr(sys, "argv", argv)
    sweep_fit.main()
    done = json.loads(out.read_text())
    assert done["scored_on"] == "valid" and set(done) == {"scored_on", "zero_shot", "icl", "small", "ceiling"}
    assert set(done["small"]["scores"]) == set(done["ceiling"]["scores"]) == {"capitalize", "lowercase"}
    table = capsys.readouterr().out
    assert "| small | steps=2 eval_every=1 n_prompts=2 shots=2 |" in table and "| icl | - |" in table
    done["small"]["fit_seconds"] = -1.0  # a rerun keeps what is there
    out.write_text(json.dumps(done))
    sweep_fit.main()
    assert json.loads(out.read_text())["small"]["fit_seconds"] == -1.0
    monkeypatch.setattr(sys, "argv", argv + ["--split", "test"])
    with pytest.raises(SystemExit, match="holds scores on the valid split"):
        sweep_fit.main()
