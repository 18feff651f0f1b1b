import json

import pytest

from tvjax.data import Task, TaskError, builtin_names, load_task, read_pairs

PAIRS = [("a", "A"), ("b", "B"), ("c", "C"), ("d", "D"), ("e", "E")]


def test_builtin_suite_is_large_and_varied():
    names = builtin_names()
    assert len(names) >= 12
    for family in ("antonym", "country_capital", "english_french", "english_spanish", "present_past",
                   "singular_plural", "capitalize", "uppercase", "first_letter"):
        assert family in names
    for name in names:
        task = load_task(name)
        assert len(task) >= 100, name
        inputs = [x for x, _ in task.train + task.valid + task.test]
        assert len(set(inputs)) == len(inputs), f"{name} has duplicate inputs"


def test_splits_are_deterministic_disjoint_and_seeded():
    a, b = load_task("antonym", seed=0), load_task("antonym", seed=0)
    assert a == b
    assert not set(a.train) & set(a.test) and not set(a.train) & set(a.valid)
    assert load_task("antonym", seed=1).train != a.train
    assert len(a.train) > len(a.test) > len(a.valid) > 0


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".tsv"])
def test_loaders_read_every_format(tmp_path, suffix):
    path = tmp_path / f"caps{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps([{"input": x, "output": y} for x, y in PAIRS]))
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps({"input": x, "output": y}) for x, y in PAIRS))
    else:
        sep = "," if suffix == ".csv" else "\t"
        path.write_text(f"input{sep}output\n" + "\n".join(f"{x}{sep}{y}" for x, y in PAIRS))
    assert sorted(read_pairs(path)) == PAIRS
    task = load_task(path)
    assert task.name == "caps" and len(task) == 5


def test_directory_with_given_splits(tmp_path):
    for split, pairs in (("train", PAIRS[:3]), ("valid", PAIRS[3:4]), ("test", PAIRS[4:])):
        (tmp_path / f"{split}.json").write_text(json.dumps([{"input": x, "output": y} for x, y in pairs]))
    task = load_task(tmp_path)
    assert task.train == tuple(PAIRS[:3]) and task.test == (PAIRS[4],)
    (tmp_path / "valid.json").unlink()
    with pytest.raises(TaskError, match="valid.json"):
        load_task(tmp_path)


def test_unknown_task_lists_the_builtin_ones():
    with pytest.raises(TaskError, match="not a built-in task.*antonym.*uppercase"):
        load_task("antonyms")


@pytest.mark.parametrize("text, line", [
    ('[\n  {"input": "a", "output": "A"},\n  {"input": "b"}\n]', 3),
    ('[\n  {"input": "a", "output": "A"},\n  {"input": "b", "output": }\n]', 3),
    ('{"input": "a", "output": "A"}', 1),
])
def test_malformed_json_names_path_and_line(tmp_path, text, line):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(TaskError, match=f"bad.json:{line}:"):
        read_pairs(path)


def test_malformed_csv_and_jsonl(tmp_path):
    (tmp_path / "bad.csv").write_text("a,A\nb,B,extra\n")
    with pytest.raises(TaskError, match="bad.csv:2: expected 2 columns"):
        read_pairs(tmp_path / "bad.csv")
    (tmp_path / "bad.jsonl").write_text('{"input": "a", "output": "A"}\nnot json\n')
    with pytest.raises(TaskError, match="bad.jsonl:2: invalid JSON"):
        read_pairs(tmp_path / "bad.jsonl")
    (tmp_path / "bad.txt").write_text("a A")
    with pytest.raises(TaskError, match="unknown task format"):
        read_pairs(tmp_path / "bad.txt")


def test_task_too_small():
    with pytest.raises(TaskError, match="at least 3"):
        Task.from_pairs("tiny", PAIRS[:2])
    with pytest.raises(TaskError, match="10-shot prompts need at least 11"):
        Task.from_pairs("small", PAIRS).require(10)


def test_non_utf8_file_names_the_path(tmp_path):
    (tmp_path / "latin1.csv").write_bytes("caf\xe9,CAF\xc9\n".encode("latin-1"))
    with pytest.raises(TaskError, match="latin1.csv: not UTF-8"):
        read_pairs(tmp_path / "latin1.csv")
