"""`tvjax compare` end to end on a tiny model, its report, task lists, and `tvjax plot`."""

import dataclasses
import json

import numpy as np
import pytest

import tvjax

from tvjax.cli import main
from tvjax.compare import METHODS, check_methods, task_paths
from tvjax.taskvector import save_task_vector

PNG = b"\x89PNG\r\n\x1a\n"


def test_compare_writes_table_json_chart_and_reuses_results(tmp_path, capsys, tiny_lm_dir, tiny_task):
    caps = tmp_path / "tasks" / "caps"  # a directory of task files holding one split directory
    caps.mkdir(parents=True)
    for split in ("train", "valid", "test"):  # tiny_task's splits: the shapes of the other tests, compiled once
        pairs = [{"input": x, "output": y} for x, y in tiny_task.split(split)]
        (caps / f"{split}.json").write_text(json.dumps(pairs))
    out = tmp_path / "out"
    args = ["compare", "--model", str(tiny_lm_dir), "--tasks", str(caps.parent), "--out", str(out), "--shots", "3",
            "--n-prompts", "4", "--steps", "2", "--k", "2", "--fv-prompts", "4", "--reinforce-steps", "2",
            "--reinforce-samples", "4"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| caps |" in printed and "layer patching" in printed and "REINFORCE" in printed
    report = json.loads((out / "compare.json").read_text())
    result = report["results"]["caps"]
    assert set(result["scores"]) == set(METHODS) == set(report["methods"]) == set(result["methods"])
    assert {k for k in result["seconds"] if k.startswith("fit_")} == {
        "fit_layer_patching", "fit_function_vector", "fit_reinforce", "fit_task_vector"}
    assert np.shape(result["rankings"]["indirect_effects"]) == (2, 4)
    assert len(result["chose"]["function_vector"]["heads"]) == 2
    assert "| caps | " in (out / "compare.md").read_text() and (out / "compare.png").read_bytes()[:8] == PNG
    assert main(args) == 0  # the second run reuses tasks/caps.json
    assert "caps: reusing" in capsys.readouterr().out

    # every fitted method's intervention is saved, and `tvjax eval` scores it again
    fitted = ("layer_patching", "function_vector", "reinforce", "task_vector")
    assert result["files"] == {m: str(out / "interventions" / f"caps.{m}.safetensors") for m in fitted}
    for method in fitted:
        assert main(["eval", "--intervention", result["files"][method], "--task", str(caps), "--shots", "3",
                     "--out", str(tmp_path / "eval")]) == 0
        again = json.loads((tmp_path / "eval" / "caps.eval.json").read_text())["scores"][method]
        assert again == result["scores"][method], method

    assert main(["plot", str(out / "compare.json"), "--out", str(tmp_path / "plots")]) == 0
    written = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert written == ["caps_indirect_effects.png", "caps_reinforce_probabilities.png", "caps_soft_weights.png",
                       "compare.png"]


def test_plot_a_task_vector_file(tmp_path, capsys, tiny_lm):
    c = tiny_lm.config
    path = save_task_vector(tmp_path / "tv.safetensors", np.zeros((c.n_layers, c.n_heads)),
                            np.zeros((c.n_layers, c.n_heads, c.head_dim)), c, task="caps")
    assert main(["plot", str(path), "--out", str(tmp_path)]) == 0
    single = (tmp_path / "tv_soft_weights.png").read_bytes()
    assert single[:8] == PNG
    theta = np.linspace(-3, 3, c.n_layers * c.n_heads).reshape(c.n_layers, c.n_heads)
    split = save_task_vector(tmp_path / "split.safetensors", theta, np.zeros((c.n_layers, c.n_heads, c.head_dim)),
                             c, -theta, task="caps", positions="split")
    assert main(["plot", str(split), "--out", str(tmp_path)]) == 0
    both = (tmp_path / "split_soft_weights.png").read_bytes()
    width = lambda png: int.from_bytes(png[16:20], "big")  # the IHDR chunk
    assert both[:8] == PNG and width(both) > 1.3 * width(single)  # last prompt token | answer tokens


def test_task_lists(tmp_path):
    assert task_paths("antonym, present_past") == ["antonym", "present_past"]
    (tmp_path / "a.json").write_text("[]")
    (tmp_path / "notes.txt").write_text("")
    split = tmp_path / "b"
    split.mkdir()
    (split / "train.json").write_text("[]")
    assert task_paths(str(tmp_path)) == [str(tmp_path / "a.json"), str(split)]
    assert task_paths(str(split)) == [str(split)]  # a split directory is one task
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no task files"):
        task_paths(str(empty))
    with pytest.raises(ValueError, match="no tasks given"):
        task_paths(" , ")


def test_method_subsets(capsys):
    assert check_methods(["task_vector", "zero_shot"]) == ("zero_shot", "task_vector")
    with pytest.raises(ValueError, match=r"unknown or no methods \['fv'\]; methods: zero_shot, icl"):
        check_methods(["fv", "icl"])
    assert main(["compare", "--tasks", "antonym", "--methods", "icl,patching"]) == 2
    assert "unknown or no methods ['patching']" in capsys.readouterr().err



def test_progress_counts_every_phase(tiny_lm, tiny_task):
    from tvjax.compare import compare_task, phases

    class Bar:  # what compare_task uses of a tqdm bar
        updates, shown = 0, []

        def update(self, n):
            self.updates += n

        def set_postfix_str(self, text):
            self.shown.append(text)

    assert phases(METHODS) == 1 + 4 + 6 and phases(("zero_shot", "icl")) == 2
    bar = Bar()
    result = compare_task(tiny_lm, tiny_task, methods=("zero_shot", "layer_patching"), progress=bar)
    assert bar.updates == phases(("zero_shot", "layer_patching")) == 4 == len(result["seconds"])
    assert bar.shown == ["means", "fit_layer_patching", "eval_zero_shot", "eval_layer_patching"]


def test_tasks_compared_together_share_means_and_the_soft_fit_as_each_alone(tiny_lm, tiny_task, echo_task):
    import tvjax
    from tvjax.compare import CompareConfig, compare_task, fit_shared

    config = CompareConfig(shots=3, n_prompts=4, fit=tvjax.FitConfig(steps=4, eval_every=2, batch_size=2))
    methods = ("zero_shot", "layer_patching", "task_vector")
    tasks = [tiny_task, echo_task]
    shared = fit_shared(tiny_lm, tasks, config, methods)
    for task in tasks:
        alone = compare_task(tiny_lm, task, config, methods)
        together = compare_task(tiny_lm, task, config, methods, shared=shared[task.name])
        assert together["scores"] == alone["scores"] and together["seconds"].keys() == alone["seconds"].keys()
        assert together["chose"]["layer_patching"]["layer"] == alone["chose"]["layer_patching"]["layer"]
        assert together["chose"]["task_vector"]["best_step"] == alone["chose"]["task_vector"]["best_step"]
        np.testing.assert_allclose(together["rankings"]["soft_weights"], alone["rankings"]["soft_weights"], atol=1e-4)


def test_tasks_are_fitted_together_in_groups_of_one_prompt_length(tiny_lm, tiny_task):
    """A task of long passages is never fitted with short ones (its rows would pad theirs); a
    block's tasks are cut into near-equal groups of at most the group size, in the given order."""
    from tvjax.compare import CompareConfig, task_groups

    long = tvjax.Task("long", *(tuple((" ".join([x] * 80), y) for x, y in split)
                                for split in (tiny_task.train, tiny_task.valid, tiny_task.test)))
    short = [dataclasses.replace(tiny_task, name=f"t{i}") for i in range(5)]
    groups = task_groups(tiny_lm, [short[0], long, *short[1:]], CompareConfig(), size=2)
    assert [[t.name for t in g] for g in groups] == [["t0"], ["t1", "t2"], ["t3", "t4"], ["long"]]


def test_a_long_list_of_tasks_is_a_list_not_a_path():
    names = ["antonym", "uppercase"] * 150  # longer than a file name may be
    assert task_paths(",".join(names)) == names
