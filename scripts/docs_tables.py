"""The results tables of the docs, rendered from results files.

    python scripts/docs_tables.py            # rewrite every marked table of README.md and docs/*.md
    python scripts/docs_tables.py --check    # only check: name each stale table, exit 1 if any

A page marks each table of measured results, in place:

    <!-- table: results/sweep_default_valid.json -->
    (the table, written by this script)
    <!-- /table -->

The path is relative to the page (the README's start with `docs/`); a second word after it
names one of the file's tables when it has several (`<!-- table: FILE NAME -->`). Nothing
between the markers is kept: edit the results file, then rerun this script.

A results file (JSON, in docs/results/ or beside the page) holds the numbers (what the
measuring script wrote or printed), `command` (the command line, or lines, that produced them;
where it was not recorded, what is known of it), an optional `note` (when, where, with which
recipe) and `tables`: `{name: spec}`, how each of its tables is rendered. A spec's `render` is
one of

- `cells`: `columns` and `rows` as printed; a cell is a string, a number (printed as JSON
  writes it), a list (its items joined by " / ") or `{"b": cell}` (bold); a row is a list of
  cells or `{"bold": true, "cells": [...]}` (every cell bold);
- `printed`: the first Markdown table in the file's `printed` lines (the script's output);
- `scores`: `tvjax.report.markdown_table` over a results file's `results` (`tvjax compare`'s
  `compare.json`, `docs/task_table.json`): `methods`, optional `labels` ({method: header}),
  `tasks` (a subset, in order), `mean` (default true), `source` (another file, else this one);
- `summary`: `tvjax.report.summary_table` of the same (`methods`, `source`): each method's mean
  over the tasks with its standard error, and its gain over ICL;
- `seconds`: `tvjax.report.seconds_table` of `tvjax compare`'s results;
- `sweep`: `scripts/sweep_fit.py`'s JSON as rows of recipes: `tasks` and their `short` names,
  `rows` of `{"entry", "label", "fit" (a mark after the seconds), "bold" (of "label",
  "means", "fit")}`, or `{"cells": [...]}` for a row measured elsewhere (its `note` says where);
- `sweep_tasks`: the same JSON as rows of tasks: `tasks` and `columns` of `{"entry", "label"}`,
  first token / exact / contains in percent, and their means;
- `curves`: `scripts/benchmark.py time-to-accuracy`'s JSON: `rows` of `{"curve", "label"}`;
- `join`: `parts` side by side, rows matched by their first cell: each part a `table` (a spec,
  or "NAME" of this file, or "FILE NAME"), the `columns` it gives and their `labels`.

`tests/test_docs_tables.py` fails, naming the page and the table, when a marked table differs
from what its file renders, and when a table of measured results (`is_results_table`: cells of
numbers, percentages, seconds, ratios) stands outside the markers.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKED = re.compile(r"^(?P<indent>[ \t]*)<!-- table: (?P<path>\S+)(?: (?P<name>\S+))? -->\n(?P<body>.*?)"
                    r"^(?P=indent)<!-- /table -->$", re.S | re.M)
OPEN = re.compile(r"<!-- table:")
METRICS = ("first_token", "exact_match", "contains")


def pages(root: Path = ROOT) -> list[Path]:
    """The pages whose tables are generated: README.md and docs/*.md."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


# ---------------------------------------------------------------------------------------- cells


def cell(value) -> str:
    """A cell as printed: strings as they are, numbers as JSON writes them, lists joined by " / "."""
    if isinstance(value, dict):
        return f"**{cell(value['b'])}**"
    if isinstance(value, list):
        return " / ".join(cell(v) for v in value)
    if isinstance(value, bool) or value is None:
        raise ValueError(f"a cell is a string, a number, a list or {{'b': cell}}, not {value!r}")
    return str(value)


def markdown(columns: list[str], rows: list[list[str]]) -> str:
    """A Markdown table of strings (empty cells written `| |`)."""
    def line(cells):
        if len(cells) != len(columns):
            raise ValueError(f"a row of {len(cells)} cells under {len(columns)} columns: {cells}")
        return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"
    return "\n".join([line(columns), "|---" * len(columns) + "|", *map(line, rows)])


def parse(table: str) -> tuple[list[str], list[list[str]]]:
    """`(columns, rows)` of a Markdown table as `markdown` writes it."""
    lines = [line.strip() for line in table.strip().splitlines()]
    split = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]
    return split[0], split[2:]


# ------------------------------------------------------------------------------------ renderers


def render_cells(spec: dict, data: dict, here: Path) -> str:
    rows = []
    for row in spec["rows"]:
        if isinstance(row, dict):
            rows.append([f"**{cell(c)}**" if row.get("bold") else cell(c) for c in row["cells"]])
        else:
            rows.append([cell(c) for c in row])
    return markdown(spec["columns"], rows)


def render_printed(spec: dict, data: dict, here: Path) -> str:
    """The first Markdown table in the file's `printed` lines (the measuring script's output)."""
    found = tables("\n".join(data["printed"]))
    if not found:
        raise ValueError("no Markdown table in `printed`")
    return "\n".join(found[0][1])


def render_scores(spec: dict, data: dict, here: Path) -> str:
    from tvjax.report import markdown_table

    results = _source(spec, data, here)["results"]
    tasks = spec.get("tasks", list(results))
    labels = spec.get("labels", {})
    rows = {}
    for task in tasks:
        scores = results[task].get("scores", results[task])  # compare.json nests them; task_table.json does not
        rows[task] = {labels.get(m, m): scores[m] for m in spec["methods"]}
    return markdown_table(rows, [labels.get(m, m) for m in spec["methods"]], mean=spec.get("mean", True))


def render_summary(spec: dict, data: dict, here: Path) -> str:
    from tvjax.report import summary_table

    results = _source(spec, data, here)["results"]
    return summary_table({task: r.get("scores", r) for task, r in results.items()}, spec["methods"])


def render_seconds(spec: dict, data: dict, here: Path) -> str:
    from tvjax.report import seconds_table

    return seconds_table(_source(spec, data, here)["results"])


def render_sweep(spec: dict, data: dict, here: Path) -> str:
    tasks = spec["tasks"]
    rows = []
    for row in spec["rows"]:
        if "cells" in row:
            rows.append([cell(c) for c in row["cells"]])
            continue
        entry = data[row["entry"]]
        cells = {"label": row["label"],
                 "means": " / ".join(f"{_mean(entry, tasks, m):.1f}" for m in METRICS),
                 "fit": (f"{entry['fit_seconds']:.0f}" if "fit_seconds" in entry else "-") + row.get("fit", "")}
        bold = set(row.get("bold", ()))
        cells = {k: f"**{v}**" if k in bold else v for k, v in cells.items()}
        exact = [f"{100 * entry['scores'][t]['exact_match']:.0f}" for t in tasks]
        rows.append([cells["label"], cells["means"], *exact, cells["fit"]])
    return markdown(["recipe", "first token / exact / contains", *spec["short"], "fit s"], rows)


def render_sweep_tasks(spec: dict, data: dict, here: Path) -> str:
    tasks, columns = spec["tasks"], spec["columns"]
    rows = [[task, *(" / ".join(f"{100 * data[c['entry']]['scores'][task][m]:.0f}" for m in METRICS)
                     for c in columns)] for task in tasks]
    rows.append(["**mean**", *("**" + " / ".join(f"{_mean(data[c['entry']], tasks, m):.1f}" for m in METRICS) + "**"
                               for c in columns)])
    return markdown(["task", *(c["label"] for c in columns)], rows)


def render_curves(spec: dict, data: dict, here: Path) -> str:
    rows = [[row["label"], ", ".join(f"{p['steps']}: {p['seconds']:.1f} -> {100 * p['valid_first_token']:.1f} / "
                                     f"{100 * p['valid_exact_match']:.1f}" for p in data["curves"][row["curve"]])]
            for row in spec["rows"]]
    return markdown(spec["columns"], rows)


def render_join(spec: dict, data: dict, here: Path) -> str:
    columns, joined = None, {}
    for part in spec["parts"]:
        table = part["table"]
        if isinstance(table, dict):
            text = render_spec(table, data, here)
        elif table.split()[0].endswith(".json"):  # "FILE" or "FILE NAME"
            text = render(here / table.split()[0], (table.split()[1:] or [None])[0])
        else:  # "NAME" of this file
            text = render_spec(data["tables"][table], data, here)
        header, rows = parse(text)
        picked = [header.index(c) for c in part["columns"]]
        columns = columns or [header[0]]
        columns += part.get("labels", part["columns"])
        for row in rows:
            joined.setdefault(row[0], [row[0]]).extend(row[i] for i in picked)
    width = len(columns)
    short = [k for k, row in joined.items() if len(row) != width]
    if short:
        raise ValueError(f"rows missing from a part of the join: {short}")
    return markdown(columns, list(joined.values()))


RENDERERS = {"cells": render_cells, "printed": render_printed, "scores": render_scores, "summary": render_summary,
             "seconds": render_seconds, "sweep": render_sweep,
             "sweep_tasks": render_sweep_tasks, "curves": render_curves, "join": render_join}


def render_spec(spec: dict, data: dict, here: Path) -> str:
    if spec.get("render") not in RENDERERS:
        raise ValueError(f"render {spec.get('render')!r}: one of {', '.join(RENDERERS)}")
    return RENDERERS[spec["render"]](spec, data, here)


def render(path: Path, name: str | None = None) -> str:
    """The Markdown of table `name` of the results file `path` (its only table if `name` is None)."""
    data = load(path)
    tables = data.get("tables", {})
    if name is None:
        if len(tables) != 1:
            raise ValueError(f"{path} has {len(tables)} tables ({', '.join(tables)}): name one in the marker")
        name = next(iter(tables))
    if name not in tables:
        raise ValueError(f"{path} has no table {name!r} ({', '.join(tables)})")
    return render_spec(tables[name], data, path.parent)


def load(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"no results file {path}")
    return json.loads(path.read_text())


def _source(spec: dict, data: dict, here: Path) -> dict:
    return load(here / spec["source"]) if "source" in spec else data


def _mean(entry: dict, tasks: list[str], metric: str) -> float:
    """Percent: `metric` averaged over `tasks` of a sweep entry (as `tvjax.experiments` averages it)."""
    return 100 * sum(entry["scores"][t][metric] for t in tasks) / len(tasks)


# -------------------------------------------------------------------------------------- pages


def regions(text: str) -> list[re.Match]:
    """The marked tables of a page; ValueError for a marker without its end."""
    found = list(MARKED.finditer(text))
    if len(found) != len(OPEN.findall(text)):
        raise ValueError("a `<!-- table: ... -->` marker without its `<!-- /table -->` (at the same indentation)")
    return found


def region_body(table: str, indent: str) -> str:
    """What stands between the markers: a blank line, the table, a blank line (indented as the markers)."""
    return "\n" + "".join(f"{indent}{line}\n" for line in table.splitlines()) + "\n"


def rendered(page: Path) -> tuple[str, list[str]]:
    """`(page text with every marked table rendered, the tables that differed from the page's)`."""
    text, stale, out, at = page.read_text(), [], [], 0
    for match in regions(text):
        label = match["path"] + (f" {match['name']}" if match["name"] else "")
        try:
            body = region_body(render(page.parent / match["path"], match["name"]), match["indent"])
        except (ValueError, KeyError, IndexError) as error:
            raise ValueError(f"{page.name}: table {label}: {error}") from error
        if body != match["body"]:
            stale.append(label)
        out += [text[at:match.start("body")], body]
        at = match.end("body")
    return "".join(out) + text[at:], stale


NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")
UNITS = re.compile(r"\b(?:s|ms|GiB|MiB|B|vs|of|prompts)\b")


def is_measurement(text: str) -> bool:
    """A cell that reads as measured numbers: digits with separators and units ("84 / 84", "4.7 s",
    "1.08x", "3.5e-2", "59 of 60 prompts"), not words with a digit in them."""
    text = text.replace("**", "").replace("`", "").strip()
    rest = UNITS.sub("", NUMBER.sub("", text))
    return bool(re.search(r"\d", text)) and re.fullmatch(r"[\s/+\-()%x:,.<>*~]*", rest) is not None


def tables(text: str) -> list[tuple[int, list[str]]]:
    """`(line number, lines)` of each Markdown table of a page (in lists too), marked or not."""
    found, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].lstrip().startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\s*\|(?:\s*:?-+:?\s*\|)+\s*",
                                                                                       lines[i + 1]):
            j = i
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                j += 1
            found.append((i + 1, lines[i:j]))
            i = j
        else:
            i += 1
    return found


def is_results_table(lines: list[str]) -> bool:
    """A table of measured results: at least a quarter of its filled cells past the first column
    are measurements (`is_measurement`), and at least two. (The tables of names, flags and
    fields in the docs have none; the results tables from 42% up.)"""
    _, rows = parse("\n".join(lines))
    cells = [c for row in rows for c in row[1:] if c]
    measured = sum(map(is_measurement, cells))
    return measured >= 2 and measured >= len(cells) / 4


def unmarked_results(page: Path) -> list[int]:
    """The first lines of `page`'s tables of measured results that no `<!-- table -->` marker generates."""
    text = page.read_text()
    marked = [(m.start("body"), m.end("body")) for m in regions(text)]
    starts = [len("\n".join(text.splitlines()[:line - 1])) + (line > 1) for line, _ in tables(text)]
    return [line for (line, rows), at in zip(tables(text), starts)
            if is_results_table(rows) and not any(a <= at < b for a, b in marked)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if a table is stale")
    parser.add_argument("pages", nargs="*", type=Path, help="default: README.md and docs/*.md")
    args = parser.parse_args(argv)
    stale_any = False
    for page in args.pages or pages():
        try:
            text, stale = rendered(page)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        for label in stale:
            stale_any = True
            print(f"{page.relative_to(ROOT) if page.is_relative_to(ROOT) else page}: table {label} "
                  f"{'is stale' if args.check else 'rewritten'}")
        if stale and not args.check:
            page.write_text(text)
    if stale_any and args.check:
        print("run `python scripts/docs_tables.py` to rewrite them from their results files", file=sys.stderr)
    return 1 if stale_any and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
