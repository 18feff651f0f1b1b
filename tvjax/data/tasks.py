"""Tasks: (input, output) pairs with deterministic seeded train / valid / test splits.

Formats read: a JSON list of `{"input": ..., "output": ...}` (the function-vectors
format), a directory with `train.json`, `valid.json`, `test.json` in that format,
JSONL with one such object per line, and two-column CSV / TSV (a header row
`input,output` is optional).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import random
from importlib import resources
from pathlib import Path

SPLITS = ("train", "valid", "test")
SUITE_NAMES = ("site", "function-vectors")  # published suites (tvjax.data.suites), named `suite:task`
FRACTIONS = (0.5, 0.2, 0.3)  # train, valid, test
Pair = tuple[str, str]


class TaskError(ValueError):
    """A task that cannot be found, parsed or split as asked."""


@dataclasses.dataclass(frozen=True)
class Task:
    """A named task with its three splits of `(input, output)` pairs."""

    name: str
    train: tuple[Pair, ...]
    valid: tuple[Pair, ...]
    test: tuple[Pair, ...]

    @classmethod
    def from_pairs(cls, name: str, pairs, seed: int = 0, fractions=FRACTIONS) -> "Task":
        """Shuffle `pairs` with `seed` and cut them into train / valid / test by `fractions`."""
        pairs = [tuple(p) for p in pairs]
        if len(pairs) < 3:
            raise TaskError(f"task {name!r} has {len(pairs)} pairs; at least 3 are needed for three splits")
        random.Random(seed).shuffle(pairs)
        n_train = max(1, round(fractions[0] * len(pairs)))
        n_valid = max(1, round(fractions[1] * len(pairs)))
        n_train = min(n_train, len(pairs) - n_valid - 1)
        return cls(name, tuple(pairs[:n_train]), tuple(pairs[n_train:n_train + n_valid]),
                   tuple(pairs[n_train + n_valid:]))

    def split(self, name: str) -> tuple[Pair, ...]:
        if name not in SPLITS:
            raise TaskError(f"unknown split {name!r}; splits: {', '.join(SPLITS)}")
        return getattr(self, name)

    def digest(self) -> str:
        """A short hash of the splits' contents: tells two versions of a task apart."""
        return hashlib.sha256(json.dumps([self.train, self.valid, self.test]).encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.train) + len(self.valid) + len(self.test)

    def require(self, shots: int) -> None:
        """Fail clearly when the train split cannot supply `shots` demonstrations plus a query
        (demonstrations are pairs other than the query: repeated pairs count once)."""
        distinct = len(set(self.train))
        if distinct < shots + 1:
            repeats = f" ({len(self.train)} with repeats)" if distinct < len(self.train) else ""
            raise TaskError(f"task {self.name!r} has {distinct} distinct train pairs{repeats}; {shots}-shot prompts "
                            f"need at least {shots + 1} (use fewer shots or a larger task)")


def builtin_dir() -> Path:
    return Path(str(resources.files("tvjax.data") / "builtin"))


def builtin_names() -> list[str]:
    return sorted(p.stem for p in builtin_dir().glob("*.json"))


def load_task(name_or_path: str | Path, seed: int = 0) -> Task:
    """A built-in task by name, a task of a downloaded suite (`site:antonym`, `tvjax.data.suites`),
    or a task file / directory by path."""
    path = Path(name_or_path)
    if str(name_or_path).partition(":")[0] in SUITE_NAMES:
        from tvjax.data.suites import expand

        paths = expand(str(name_or_path))
        if len(paths) != 1:
            raise TaskError(f"{name_or_path!r} names {len(paths)} tasks; load them one by one "
                            f"(tvjax.data.suites.expand lists them)")
        path = Path(paths[0])
    elif str(name_or_path) in builtin_names():
        path = builtin_dir() / f"{name_or_path}.json"
    elif not path.exists():
        raise TaskError(f"no task {str(name_or_path)!r}: not a file or directory, and not a built-in task "
                        f"({', '.join(builtin_names())})")
    if path.is_dir():
        files = {s: path / f"{s}.json" for s in SPLITS}
        missing = [str(f) for f in files.values() if not f.is_file()]
        if missing:
            raise TaskError(f"task directory {path} lacks {', '.join(missing)}")
        return Task(path.name, *(tuple(read_pairs(f)) for f in files.values()))
    return Task.from_pairs(path.stem, read_pairs(path), seed)


def read_pairs(path: Path) -> list[Pair]:
    """Pairs from a .json, .jsonl, .csv or .tsv file; errors name the file and line."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TaskError(f"{path}: not UTF-8 text ({e})") from e
    if suffix == ".json":
        pairs = [_pair(item, path, line) for item, line in _json_list(text, path)]
    elif suffix == ".jsonl":
        pairs = []
        for line, raw in enumerate(text.splitlines(), 1):
            if raw.strip():
                try:
                    pairs.append(_pair(json.loads(raw), path, line))
                except json.JSONDecodeError as e:
                    raise TaskError(f"{path}:{line}: invalid JSON ({e.msg})") from e
    elif suffix in (".csv", ".tsv"):
        rows = csv.reader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ",")
        pairs = []
        for line, row in enumerate(rows, 1):
            if not row or (line == 1 and [c.strip().lower() for c in row] == ["input", "output"]):
                continue
            if len(row) != 2:
                raise TaskError(f"{path}:{line}: expected 2 columns (input, output), found {len(row)}")
            pairs.append(_pair({"input": row[0], "output": row[1]}, path, line))
    else:
        raise TaskError(f"{path}: unknown task format {suffix!r}; use .json, .jsonl, .csv or .tsv")
    if not pairs:
        raise TaskError(f"{path}: no (input, output) pairs")
    return pairs


def _pair(item, path: Path, line: int) -> Pair:
    if not isinstance(item, dict) or not {"input", "output"} <= item.keys():
        raise TaskError(f"{path}:{line}: expected an object with \"input\" and \"output\", got {str(item)[:80]}")
    x, y = item["input"], item["output"]
    if not isinstance(x, (str, int, float)) or not isinstance(y, (str, int, float)) or not str(y).strip():
        raise TaskError(f"{path}:{line}: input and output must be non-empty strings or numbers")
    return str(x).strip(), str(y).strip()


def _json_list(text: str, path: Path) -> list[tuple[object, int]]:
    """The items of a top-level JSON list, each with the line it starts on."""
    decoder, items = json.JSONDecoder(), []
    skip = lambda i: len(text) - len(text[i:].lstrip())
    line = lambda i: text.count("\n", 0, i) + 1
    i = skip(0)
    if text[i:i + 1] != "[":
        raise TaskError(f"{path}:{line(i)}: expected a JSON list of {{\"input\": ..., \"output\": ...}} objects")
    i = skip(i + 1)
    while text[i:i + 1] != "]":
        try:
            item, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise TaskError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from e
        items.append((item, line(i)))
        i = skip(end)
        if text[i:i + 1] == ",":
            i = skip(i + 1)
        elif text[i:i + 1] != "]":
            raise TaskError(f"{path}:{line(i)}: invalid JSON (expected ',' or ']')")
    return items
