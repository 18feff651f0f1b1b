"""The docs against their sources: every table of measured results in the README and in `docs/`
is rendered from a results file by `scripts/docs_tables.py` (and none is stale or unmarked), and
`docs/formats.md` lists every field that `tvjax fit` and `tvjax eval` write.
"""

import dataclasses
import importlib.util
import json
import re
from pathlib import Path

import pytest

from tvjax.cli import main
from tvjax.evaluation import Scores
from tvjax.fitting import FitConfig

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("docs_tables", ROOT / "scripts" / "docs_tables.py")
docs_tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(docs_tables)
PAGES = docs_tables.pages(ROOT)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_generated_tables_match_their_results_files(page):
    _, stale = docs_tables.rendered(page)
    assert not stale, (f"{page.relative_to(ROOT)}: stale tables {', '.join(stale)}: their results files changed "
                       f"(or the page was edited between the markers); run python scripts/docs_tables.py")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_results_table_outside_the_markers(page):
    lines = docs_tables.unmarked_results(page)
    assert not lines, (f"{page.relative_to(ROOT)}: the tables of measured results at lines {lines} are not "
                       f"generated: put their numbers in a results file (docs/results/) and mark them "
                       f"(<!-- table: FILE --> ... <!-- /table -->; see scripts/docs_tables.py)")


def test_every_results_file_is_used_and_says_what_produced_it():
    used = {(page.parent / m["path"]).resolve() for page in PAGES for m in docs_tables.regions(page.read_text())}
    for path in used:
        data = json.loads(path.read_text())
        command = data.get("command")
        assert command and all(isinstance(c, str) and c for c in (command if isinstance(command, list) else [command])), \
            f"{path.relative_to(ROOT)}: no `command` (what produced its numbers)"
    unused = [p.name for p in (ROOT / "docs" / "results").glob("*.json") if p.resolve() not in used]
    assert not unused, f"docs/results files no page marks: {unused}"


def test_the_check_names_a_stale_table_and_the_rewrite_fixes_it(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    spec = {"render": "cells", "columns": ["task", "ICL"], "rows": [["antonym", [58, 58]],
                                                                   {"bold": True, "cells": ["mean", [58, 58]]}]}
    (results / "run.json").write_text(json.dumps({"command": "tvjax eval --task antonym", "tables": {"t": spec}}))
    page = tmp_path / "page.md"
    page.write_text("Intro.\n\n<!-- table: results/run.json -->\n\n| task | ICL |\n|---|---|\n| antonym | 58 / 58 |\n"
                    "| **mean** | **58 / 58** |\n\n<!-- /table -->\n\nAfter.\n")
    assert docs_tables.main(["--check", str(page)]) == 0
    spec["rows"][0][1] = [59, 58]
    (results / "run.json").write_text(json.dumps({"command": "x", "tables": {"t": spec}}))
    assert docs_tables.main(["--check", str(page)]) == 1
    assert "page.md: table results/run.json is stale" in capsys.readouterr().out
    assert "58 / 58 |\n| **mean**" in page.read_text()  # --check writes nothing
    assert docs_tables.main([str(page)]) == 0
    assert "| antonym | 59 / 58 |" in page.read_text() and page.read_text().endswith("<!-- /table -->\n\nAfter.\n")
    assert docs_tables.main(["--check", str(page)]) == 0
    page.write_text(page.read_text() + "\n| recipe | valid |\n|---|---|\n| before | 88.0 / 79.0 |\n| default | 88.3 / 85.1 |\n")
    assert docs_tables.unmarked_results(page) == [page.read_text().splitlines().index("| recipe | valid |") + 1]
    page.write_text(page.read_text().replace("<!-- /table -->", ""))
    assert docs_tables.main(["--check", str(page)]) == 2
    assert "without its `<!-- /table -->`" in capsys.readouterr().err


def test_results_tables_are_told_from_tables_of_names():
    assert docs_tables.is_results_table(["| task | ICL |", "|---|---|", "| antonym | 58 / 58 |", "| next | 87 / 65 |"])
    assert docs_tables.is_results_table(["| workload | tvjax | ratio |", "|---|---|---|", "| fit | 4.7 s | 1.08x |"])
    assert not docs_tables.is_results_table(["| field | what |", "|---|---|", "| `n` | prompts scored |",
                                             "| `theta` | `[L, N]`: one logit per head, 2 of them |"])


# ------------------------------------------------------------------------------------- formats.md

FORMATS = ROOT / "docs" / "formats.md"


def documented(intro: str) -> list[str]:
    """The names in the first column of the first table after the line of formats.md starting with `intro`."""
    text = FORMATS.read_text()
    at = next((m.start() for m in re.finditer("^" + re.escape(intro), text, re.M)), None)
    assert at is not None, f"formats.md: no line starting {intro!r}"
    _, lines = docs_tables.tables(text[at:])[0]
    _, rows = docs_tables.parse("\n".join(lines))
    return [name for row in rows for name in re.findall(r"`([^`]+)`", row[0])]


def test_formats_lists_every_field_fit_and_eval_write(tmp_path, tiny_lm_dir):
    task = tmp_path / "caps.jsonl"
    task.write_text("\n".join(json.dumps({"input": w, "output": w.upper()}) for w in
                              ["apple", "river", "stone", "cloud", "green", "house", "light", "music", "ocean",
                               "paper", "quiet", "sharp", "table", "water", "young", "zebra"]))
    out = tmp_path / "out"  # positions split (the default): the history has both stages
    assert main(["fit", "--model", str(tiny_lm_dir), "--task", str(task), "--out", str(out), "--shots", "2",
                 "--n-prompts", "2", "--steps", "2", "--answer-steps", "1", "--batch-size", "2",
                 "--eval-every", "1"]) == 0
    assert main(["eval", "--model", str(tiny_lm_dir), "--task", str(task), "--shots", "2", "--tv",
                 str(out / "caps.safetensors"), "--out", str(out)]) == 0
    fitted = json.loads((out / "caps.json").read_text())
    evaluated = json.loads((out / "caps.eval.json").read_text())
    header = (out / "caps.eval.csv").read_text().splitlines()[0].split(",")

    def same(intro, written):
        listed, written = set(documented(intro)), set(written)
        assert listed == written, (f"formats.md, the table after {intro!r}: undocumented {sorted(written - listed)}, "
                                   f"listed but not written {sorted(listed - written)}")

    same("`tvjax fit` writes `<out>/<task>.json`", fitted)
    same("`fit`, the fitting settings", [f.name for f in dataclasses.fields(FitConfig)])
    same("`fit`, the fitting settings", fitted["fit"])
    same("`history`, one entry per validation", {k for entry in fitted["history"] for k in entry})
    same("Scores (`tvjax.Scores`)", [f.name for f in dataclasses.fields(Scores)])
    for scores in (*fitted["scores"].values(), *evaluated["scores"].values()):
        same("Scores (`tvjax.Scores`)", scores)
    same("`tvjax eval` writes `<out>/<task>.eval.json`", evaluated)
    same("and `<out>/<task>.eval.csv`", header)
    phases = documented("`seconds`, the wall time of each phase")  # `eval_<method>` stands for a family
    patterns = [re.compile(re.sub(r"<\w+>", r"\\w+", re.escape(p))) for p in phases]
    assert all(any(p.fullmatch(k) for p in patterns) for k in fitted["seconds"]), (phases, list(fitted["seconds"]))
    assert all(any(p.fullmatch(k) for k in fitted["seconds"]) for p in patterns), (phases, list(fitted["seconds"]))
