"""The `tvjax` command, run in-process on a tiny model with a real tokenizer."""

import dataclasses
import json

import numpy as np
import pytest

from tvjax.cli import build_parser, compare_config, main
from tvjax.compare import CompareConfig
from tvjax.taskvector import save_task_vector


def test_tasks_lists_builtin_tasks_with_sizes(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "antonym" in out and "country_capital" in out and "train" in out


def test_fit_eval_generate_round_trip(tmp_path, capsys, tiny_lm_dir):
    model = str(tiny_lm_dir)
    task = tmp_path / "caps.jsonl"
    task.write_text("\n".join(json.dumps({"input": w, "output": w.upper()}) for w in
                              ["apple", "river", "stone", "cloud", "green", "house", "light", "music", "ocean",
                               "paper", "quiet", "sharp", "table", "water", "young", "zebra"]))
    out_dir = tmp_path / "out"
    assert main(["fit", "--model", model, "--task", str(task), "--out", str(out_dir), "--shots", "3",
                 "--n-prompts", "4", "--steps", "3", "--batch-size", "2", "--eval-every", "1"]) == 0
    printed = capsys.readouterr().out
    assert "soft TV" in printed and "saved" in printed
    results = json.loads((out_dir / "caps.json").read_text())
    assert set(results["scores"]) == {"zero_shot", "icl", "task_vector"} and results["fit"]["steps"] == 3
    tv = out_dir / "caps.safetensors"
    assert main(["eval", "--model", model, "--task", str(task), "--shots", "3", "--tv", str(tv),
                 "--out", str(out_dir)]) == 0
    assert "soft TV" in capsys.readouterr().out
    evaluated = json.loads((out_dir / "caps.eval.json").read_text())
    assert evaluated["model"] == model and set(evaluated["scores"]) == {"zero_shot", "icl", "task_vector"}
    assert (out_dir / "caps.eval.csv").read_text().splitlines()[0] == "method,first_token,exact_match,contains,n,skipped"
    assert main(["generate", "--model", model, "--tv", str(tv), "--query", "fast", "--max-new-tokens", "3"]) == 0
    assert "'Q: fast\\nA:' -> " in capsys.readouterr().out


def test_bad_input_exits_non_zero_with_a_message(tmp_path, capsys, tiny_lm, tiny_lm_dir):
    assert main(["fit", "--task", "antonyms"]) == 2
    assert "not a built-in task" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('[{"input": "a", "output": "A"},\n {"input": "b"}]')
    assert main(["eval", "--model", str(tiny_lm_dir), "--task", str(bad)]) == 2
    assert "bad.json:2:" in capsys.readouterr().err
    other = tmp_path / "other.safetensors"
    c = tiny_lm.config.replace(n_layers=3)
    save_task_vector(other, np.zeros((3, c.n_heads)), np.zeros((3, c.n_heads, c.head_dim)), c)
    assert main(["generate", "--model", str(tiny_lm_dir), "--tv", str(other), "--prompt", "hi"]) == 2
    assert "cannot be applied" in capsys.readouterr().err


def test_eval_takes_the_task_the_task_vector_records(tmp_path, capsys, tiny_lm, tiny_lm_dir):
    c = tiny_lm.config
    arrays = np.zeros((c.n_layers, c.n_heads)), np.zeros((c.n_layers, c.n_heads, c.head_dim))
    named = save_task_vector(tmp_path / "a.safetensors", *arrays, c, task="antonym")
    assert main(["eval", "--model", str(tiny_lm_dir), "--tv", str(named), "--shots", "1", "--split", "valid",
                 "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "antonym.eval.json").read_text())["task"] == "antonym"
    assert main(["eval", "--model", str(tiny_lm_dir), "--tv", str(named), "--shots", "1", "--split", "valid",
                 "--out", str(tmp_path), "--first-token-only"]) == 0
    scores = json.loads((tmp_path / "antonym.eval.json").read_text())["scores"]
    assert {s["exact_match"] for s in scores.values()} == {None} and " / - |" in capsys.readouterr().out
    unnamed = save_task_vector(tmp_path / "b.safetensors", *arrays, c)
    assert main(["eval", "--model", str(tiny_lm_dir), "--tv", str(unnamed)]) == 2
    assert "--task is needed (the task vector records none)" in capsys.readouterr().err


def test_generate_queries_end_like_the_fitting_prompts(tmp_path, capsys, tiny_lm, tiny_lm_dir):
    c = tiny_lm.config
    tv = save_task_vector(tmp_path / "numbers.safetensors", np.zeros((c.n_layers, c.n_heads)),
                          np.zeros((c.n_layers, c.n_heads, c.head_dim)), c, task="next_number", lead=" ")
    assert main(["generate", "--model", str(tiny_lm_dir), "--tv", str(tv), "--query", "41",
                 "--max-new-tokens", "2"]) == 0
    assert "'Q: 41\\nA: ' -> " in capsys.readouterr().out


def test_fit_resume_continues_from_checkpoints(tmp_path, capsys, tiny_lm_dir):
    task = tmp_path / "caps.tsv"
    task.write_text("\n".join(f"{w}\t{w.upper()}" for w in ["apple", "river", "stone", "cloud", "green", "house",
                                                            "light", "music", "ocean", "paper", "quiet", "sharp"]))
    out = tmp_path / "out"
    fit = ["fit", "--model", str(tiny_lm_dir), "--task", str(task), "--out", str(out), "--shots", "2",
           "--n-prompts", "2", "--batch-size", "2", "--eval-every", "2", "--positions", "last", "--form", "blend",
           "--resume"]  # one stage: its checkpoints in one folder
    assert main(fit + ["--steps", "4"]) == 0
    assert sorted(p.name for p in (out / "checkpoints" / "caps").iterdir() if p.name.isdigit()) == ["2", "4"]
    assert main(fit + ["--steps", "6"]) == 0
    history = json.loads((out / "caps.json").read_text())["history"]
    assert [h["step"] for h in history] == [0, 2, 4, 6]
    capsys.readouterr()
    assert main(fit[:-1] + ["--steps", "6", "--checkpoint-dir", str(out / "checkpoints" / "caps")]) == 2
    assert "already holds checkpoints (latest step 6)" in capsys.readouterr().err



OTHER_STRINGS = {"adam": "sgd", "split": "answer", "shift": "blend"}  # string fields' defaults -> another valid value


def _other(value):
    """A value of a config field that is not its default `value`."""
    if isinstance(value, str):
        return OTHER_STRINGS[value]
    return True if isinstance(value, bool) else 3 if value is None else value + 1


def test_compare_sets_every_method_setting():
    defaults = CompareConfig()
    argv, want = ["compare", "--seed", "7", "--shots", "4", "--n-prompts", "9"], {}
    for name, prefix in {"fit": "", "function_vector": "fv-", "reinforce": "reinforce-"}.items():
        for field in dataclasses.fields(getattr(defaults, name)):
            if field.name not in ("seed", "shots", "sweep"):  # shared, or set by --fv-layer
                want[name, field.name] = value = _other(getattr(getattr(defaults, name), field.name))
                flag = "--" + (prefix + field.name).replace("_", "-")
                argv += [flag] if value is True else [flag, str(value)]
    config = compare_config(build_parser().parse_args(argv))
    assert {key: getattr(getattr(config, key[0]), key[1]) for key in want} == want
    assert (config.seed, config.shots, config.n_prompts) == (7, 4, 9)
    assert config.fit.seed == config.function_vector.seed == config.reinforce.seed == 7
    assert config.function_vector.shots == 4 and not config.function_vector.sweep  # --fv-layer 3
    assert compare_config(build_parser().parse_args(["compare"])) == defaults  # a layer sweep by default

    aliases = compare_config(build_parser().parse_args(["compare", "--k", "2", "--fv-prompts", "5", "--steps", "6"]))
    assert (aliases.function_vector.k, aliases.function_vector.n_prompts, aliases.fit.steps) == (2, 5, 6)


def test_generate_and_compare_take_the_scale_flags():
    scale = ["--mesh", "data=1", "--dtype", "bfloat16", "--remat", "dots", "--distributed", "--attention",
             "dot_product", "--attention-chunk", "none"]
    for argv in (["generate", "--prompt", "hi"], ["compare"]):
        args = build_parser().parse_args(argv + scale)
        assert (args.mesh, args.dtype, args.remat, args.distributed) == ("data=1", "bfloat16", "dots", True)
        assert (args.attention, args.attention_chunk) == ("dot_product", None)
    assert build_parser().parse_args(["compare", "--attention-chunk", "256"]).attention_chunk == 256
    with pytest.raises(SystemExit):
        build_parser().parse_args(["compare", "--attention-chunk", "0"])


def test_fit_several_tasks_together(tmp_path, capsys, tiny_lm_dir):
    words = ["apple", "river", "stone", "cloud", "green", "house", "light", "music", "ocean", "paper", "quiet", "sharp"]
    for name, pairs in {"caps": [(w, w.upper()) for w in words], "rev": [(w, w[::-1]) for w in words]}.items():
        (tmp_path / f"{name}.tsv").write_text("\n".join(f"{x}\t{y}" for x, y in pairs))
    out = tmp_path / "out"
    fit = ["fit", "--model", str(tiny_lm_dir), "--task", f"{tmp_path / 'caps.tsv'},{tmp_path / 'rev.tsv'}",
           "--out", str(out), "--shots", "2", "--n-prompts", "2", "--steps", "2", "--batch-size", "2",
           "--eval-every", "1", "--positions", "last", "--form", "blend"]
    assert main(fit) == 0
    assert capsys.readouterr().out.count("soft TV") == 2
    for name in ("caps", "rev"):
        results = json.loads((out / f"{name}.json").read_text())
        assert results["task"] == name and [h["step"] for h in results["history"]] == [0, 1, 2]
        assert set(results["scores"]) == {"zero_shot", "icl", "task_vector"} and (out / f"{name}.safetensors").is_file()
    assert main(fit + ["--resume"]) == 0  # no checkpoint yet: a fresh run that checkpoints
    assert (out / "checkpoints" / "caps+rev" / "2").is_dir()
    longer = fit + ["--resume"]
    longer[longer.index("--steps") + 1] = "4"
    assert main(longer + ["--baselines", "zero_shot"]) == 0  # continues from step 2, with the checkpoint's means
    resumed = json.loads((out / "rev.json").read_text())
    assert [h["step"] for h in resumed["history"]] == [0, 1, 2, 3, 4] and "means" not in resumed["seconds"]
    assert set(resumed["scores"]) == {"zero_shot", "task_vector"} and "eval_icl" not in resumed["seconds"]


def test_baselines_are_chosen_by_name():
    parse = lambda *argv: build_parser().parse_args(["fit", "--task", "antonym", *argv]).baselines
    assert parse() == ("zero_shot", "icl") and parse("--baselines", "none") == ()
    assert parse("--baselines", "icl,zero_shot") == ("zero_shot", "icl")
    assert build_parser().parse_args(["compare", "--baselines", "icl"]).baselines == ("icl",)
    with pytest.raises(SystemExit):
        parse("--baselines", "few_shot")


def test_version_and_the_model_a_task_vector_records(tmp_path, capsys, tiny_lm, tiny_lm_dir):
    import tvjax

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"tvjax {tvjax.__version__}"
    c = tiny_lm.config
    arrays = np.zeros((c.n_layers, c.n_heads)), np.zeros((c.n_layers, c.n_heads, c.head_dim))
    recorded = save_task_vector(tmp_path / "tv.safetensors", *arrays, c, model=str(tiny_lm_dir))
    assert main(["generate", "--tv", str(recorded), "--prompt", "Q: hot\nA:", "--max-new-tokens", "2"]) == 0
    assert f"model: {tiny_lm_dir} (recorded in" in capsys.readouterr().err  # not the default model
    custom = save_task_vector(tmp_path / "custom.safetensors", *arrays, c, model="custom")
    assert main(["generate", "--tv", str(custom), "--prompt", "hi"]) == 2
    assert "give it with --model" in capsys.readouterr().err
