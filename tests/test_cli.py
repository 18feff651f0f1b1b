"""The `tvjax` command, run in-process on a tiny model with a real tokenizer."""

import dataclasses
import hashlib
import json
import re
import signal
import subprocess
import sys
import time

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
    plain = ["generate", "--model", model, "--query", "fast", "--max-new-tokens", "3", "--stop"]
    assert main(plain) == 0 and main(plain + ["--tv", str(tv), "--scale", "0"]) == 0  # strength 0: no edit
    without, at_zero = capsys.readouterr().out.splitlines()
    assert without == at_zero


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

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"tvjax {tvjax.__version__}"
    c = tiny_lm.config
    arrays = np.zeros((c.n_layers, c.n_heads)), np.zeros((c.n_layers, c.n_heads, c.head_dim))
    recorded = save_task_vector(tmp_path / "tv.safetensors", *arrays, c, model=str(tiny_lm_dir))
    assert main(["generate", "--tv", str(recorded), "--prompt", "Q: hot\nA:", "--max-new-tokens", "2"]) == 0
    assert f"model: {tiny_lm_dir} (recorded in" in capsys.readouterr().err  # not the default model
    custom = save_task_vector(tmp_path / "custom.safetensors", *arrays, c, model="custom")
    assert main(["generate", "--tv", str(custom), "--prompt", "hi"]) == 2
    assert "give it with --model" in capsys.readouterr().err


WORDS = ("apple river stone cloud green house light music ocean paper quiet sharp table water young zebra bread "
         "chair dream earth flame grape heart index juice knife lemon money night olive").split()


@pytest.fixture()
def inputs(tmp_path, tiny_lm):
    """Files for bad-input cases: a good task, a task of one repeated pair, a malformed one, a
    file where a folder belongs, a checkpoint folder holding a step, intervention files."""
    files = {"task": tmp_path / "caps.tsv", "repeated": tmp_path / "same.tsv", "malformed": tmp_path / "bad.json",
             "file": tmp_path / "file.txt", "checkpoints": tmp_path / "ckpt", "text": tmp_path / "notes.safetensors",
             "other_model": tmp_path / "other.safetensors", "float16": tmp_path / "half.safetensors",
             "empty_dir": tmp_path / "no_tasks", "json": tmp_path / "other.json"}
    files["task"].write_text("\n".join(f"{w}\t{w.upper()}" for w in WORDS))
    files["repeated"].write_text("\n".join(["hot\tcold"] * 30))
    files["malformed"].write_text('[{"input": "a", "output": "A"},\n {"input": "b"}]')
    files["file"].write_text("not a folder")
    (files["checkpoints"] / "4").mkdir(parents=True)
    files["text"].write_text("not safetensors")
    c = tiny_lm.config
    save_task_vector(files["other_model"], np.zeros((3, c.n_heads)), np.zeros((3, c.n_heads, c.head_dim)),
                     c.replace(n_layers=3))
    _float16_theta(files["float16"], c)
    files["empty_dir"].mkdir()
    files["json"].write_text('{"results": {"caps": {"scores": {}}}}')
    return files


def _float16_theta(path, config):
    """A head-blend file whose theta is float16 (the format says float32)."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    save_task_vector(path, np.zeros((config.n_layers, config.n_heads)),
                     np.zeros((config.n_layers, config.n_heads, config.head_dim)), config)
    with safe_open(str(path), framework="numpy") as f:
        metadata, arrays = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file({**arrays, "theta": arrays["theta"].astype(np.float16)}, str(path), metadata=metadata)


# (command line, words the one-line error must hold); {name} is a file of `inputs`, {out} a fresh folder
BAD_INPUTS = [
    ("fit --task {task} --steps 0", "--steps: 0: must be an integer >= 1"),
    ("fit --task {task} --steps -5", "--steps: -5"),
    ("fit --task {task} --batch-size 0", "--batch-size: 0"),
    ("fit --task {task} --eval-every 0", "--eval-every: 0"),
    ("fit --task {task} --n-prompts 0", "--n-prompts: 0"),
    ("fit --task {task} --shots -1", "--shots: -1"),
    ("fit --task {task} --learning-rate -1", "--learning-rate: -1: must be a finite number > 0"),
    ("fit --task {task} --learning-rate nan", "--learning-rate: nan"),
    ("fit --task {task} --init inf", "--init: inf"),
    ("fit --task {task} --optimizer adamm", "--optimizer: adamm: must be an optax optimizer"),
    ("fit --task {task} --patience -1", "--patience: -1"),
    ("fit --task {task} --answer-steps 0", "--answer-steps: 0"),
    ("fit --task {task} --sparsity -0.5", "--sparsity: -0.5"),
    ("fit --task {task} --positions middle", "--positions: invalid choice: 'middle'"),
    ("fit --task {task} --form push", "--form: invalid choice"),
    ("fit --task {task} --steps ten", "--steps: 'ten' is not an integer"),
    ("fit --task {task} --attention-chunk 0", "--attention-chunk"),
    ("fit --task {task} --baselines few_shot", "unknown baselines ['few_shot']"),
    ("fit --task antonyms", "no task 'antonyms'"),
    ("fit --task {repeated}", "1 distinct train pairs (15 with repeats); 10-shot prompts need at least 11"),
    ("fit --task {task} --shots 20", "20-shot prompts need at least 21"),
    ("fit --task {malformed}", "bad.json:2:"),
    ("fit --task {task} --template Q:{{input}}", "must contain {{input}} once, then {{output}} once"),
    ("fit --task {task} --out {file}", "--out {file}: {file} is a file, not a folder"),
    ("fit --task {task} --out {file}/results", "is a file, not a folder"),
    ("fit --task {task} --out /proc/tvjax-results", "--out /proc/tvjax-results: cannot write there"),
    ("fit --task {task} --checkpoint-dir {checkpoints}", "already holds checkpoints (latest step 4)"),
    ("eval --task {task} --shots 0", "--shots: 0"),
    ("eval --task {task} --seed -1", "--seed: -1"),
    ("eval --task {task} --out {file}", "is a file, not a folder"),
    ("eval --tv {empty_dir}/missing.safetensors", "no task-vector file at"),
    ("eval --task {task} --tv {text}", "notes.safetensors"),
    ("eval --task {task} --split dev", "--split: invalid choice: 'dev'"),
    ("eval --task {task} --tv {float16}", "every array of the format is float32, not theta float16"),
    ("eval --task {task} --tv {other_model} --scale 0.5", "cannot be applied"),
    ("eval --task {task} --scale nan", "--scale: nan"),
    ("generate --prompt hi --max-new-tokens 0", "--max-new-tokens: 0"),
    ("generate --prompt hi --max-new-tokens -1", "--max-new-tokens: -1"),
    ("generate --prompt hi --temperature -1", "--temperature: -1: must be a finite number >= 0"),
    ("generate --prompt hi --top-p 1.5", "--top-p: 1.5: must be a number in (0, 1]"),
    ("generate --prompt hi --top-k 0", "--top-k: 0"),
    ("generate --prompt hi --tv {other_model}", "cannot be applied"),
    ("compare --tasks {task} --methods nosuch", "nosuch"),
    ("compare --tasks {task} --reinforce-samples 1", "--reinforce-samples: 1: must be an integer >= 2"),
    ("compare --tasks {task} --k 0", "--k: 0"),
    ("compare --tasks {empty_dir}", "no task files"),
    ("compare --tasks {task} --out {file}", "is a file, not a folder"),
    ("plot {empty_dir}/compare.json", "no file"),
    ("plot {json}", "is not a compare.json"),
]


def _tree(root) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("line, says", BAD_INPUTS, ids=[line for line, _ in BAD_INPUTS])
def test_a_bad_input_is_refused_in_one_line_before_any_work(tmp_path, capsys, inputs, tiny_lm_dir, line, says):
    names = {k: str(v) for k, v in inputs.items()}
    argv = [w.format(**names) for w in line.split()]
    if argv[0] in ("fit", "eval", "generate", "compare"):
        argv += ["--model", str(tiny_lm_dir)] + (["--out", str(tmp_path / "out")] if "--out" not in argv and
                                                 argv[0] != "generate" else [])
    before = _tree(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"tvjax {argv[0]}: error: ") and "Traceback" not in err, err
    assert says.format(**names) in err, err
    assert _tree(tmp_path) == before  # nothing written, nothing changed


def test_help_shows_every_flag_with_a_line_and_its_default(capsys):
    from tvjax.fields import help_of
    from tvjax.fitting import FitConfig
    from tvjax.function_vectors import FunctionVectorConfig
    from tvjax.reinforce import ReinforceConfig

    for settings in (FitConfig, ReinforceConfig, FunctionVectorConfig, CompareConfig):
        assert all(help_of(f) for f in dataclasses.fields(settings)), settings
    for command in ("fit", "eval", "generate", "compare"):
        assert main([command, "--help"]) == 0
        capsys.readouterr()
        parser = build_parser()._subparsers._group_actions[0].choices[command]
        for action in parser._actions:
            assert action.help, (command, action.option_strings)
    assert main(["fit", "--help"]) == 0
    text = capsys.readouterr().out
    for flag, default in (("--steps", 400), ("--learning-rate", 0.2), ("--batch-size", 1), ("--eval-every", 40),
                          ("--n-prompts", 50), ("--shots", 10), ("--seed", 0), ("--init", 0.0), ("--patience", 0)):
        entry = re.search(rf"^  {flag} \S+\s+(.*?)(?=^  -)", text, re.S | re.M).group(1)  # its help, to the next flag
        assert f"(default: {default})" in " ".join(entry.split()), entry


def test_ctrl_c_says_where_the_fit_stopped_and_resume_continues(tmp_path, tiny_lm_dir):
    """SIGINT in a checkpointed fit: one line naming the step and the checkpoint it resumes from,
    exit 130, the latest 3 steps plus the best kept; --resume then finishes the run."""
    task = tmp_path / "caps.tsv"
    task.write_text("\n".join(f"{w}\t{w.upper()}" for w in WORDS))
    ckpt = tmp_path / "out" / "checkpoints" / "caps"
    fit = [sys.executable, "-m", "tvjax.cli", "fit", "--model", str(tiny_lm_dir), "--task", str(task), "--out",
           str(tmp_path / "out"), "--shots", "2", "--n-prompts", "2", "--eval-every", "2", "--positions", "last",
           "--form", "blend", "--baselines", "none", "--resume", "--steps"]
    child = subprocess.Popen(fit + ["100000"], stderr=subprocess.PIPE, text=True)
    steps = lambda: sorted(int(p.name) for p in ckpt.glob("*") if p.name.isdigit()) if ckpt.is_dir() else []
    while child.poll() is None and len(steps()) < 5:
        time.sleep(0.01)
    child.send_signal(signal.SIGINT)
    err = child.communicate(timeout=120)[1]
    assert child.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith("tvjax fit: fit caps interrupted at step "), err
    saved = int(last.split("continues from step ")[1].split(",")[0])
    assert saved == steps()[-1] and len(steps()) <= 4  # the latest 3 and the best
    done = subprocess.run(fit + [str(saved + 4)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert steps()[-1] == saved + 4 and len(steps()) <= 4
    history = json.loads((tmp_path / "out" / "caps.json").read_text())["history"]
    assert [h["step"] for h in history][-3:] == [saved, saved + 2, saved + 4]


def test_the_python_api_checks_its_numbers_too(tiny_lm, tiny_task):
    """The same rules guard the Python API, before any work, naming the argument."""
    import tvjax
    from tvjax.fields import FieldError

    with pytest.raises(FieldError, match=r"FitConfig.steps=0: must be an integer >= 1"):
        tvjax.FitConfig(steps=0)
    with pytest.raises(FieldError, match=r"ReinforceConfig.samples=1: must be an integer >= 2"):
        tvjax.ReinforceConfig(samples=1)
    with pytest.raises(ValueError, match=r"shots=-1: must be an integer >= 0"):
        tvjax.evaluate(tiny_lm, tiny_task, shots=-1)
    with pytest.raises(ValueError, match=r"n_prompts=0: must be an integer >= 1"):
        tvjax.extract_means(tiny_lm, tiny_task, n_prompts=0)
    with pytest.raises(ValueError, match=r"max_new_tokens must be at least 1, not 0"):
        tvjax.generate(tiny_lm.params, np.ones((1, 3), np.int32), config=tiny_lm.config, max_new_tokens=0)
    with pytest.raises(ValueError, match=r"n_prompts=0"):
        tvjax.TaskVectorExtractor("no/such/model", tiny_task, n_prompts=0)  # before loading the model
