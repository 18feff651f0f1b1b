"""Published task suites, downloaded once into tvjax's cache at a pinned commit, every file
checked against a pinned hash, then named like built-in tasks: `site` (every task of the
suite), `site:antonym,country-capital` (some of them).

  site              the soft-injection paper's 57 tasks with fixed train / valid / test splits
                    (SNU-DRL/Soft_Injection, `dataset/<task>/{train,valid,test}.json`, Apache-2.0)
  function-vectors  Todd et al.'s abstractive and extractive tasks (ericwtodd/function_vectors,
                    `dataset_files/{abstractive,extractive}/<task>.json`, MIT): one file per
                    task, split with the seed as a built-in task is

The pinned hashes live in `suites/<name>.json` beside this module: each file's SHA-256 (or,
for a file too large to have been hashed, its git blob id: the SHA-1 of `blob <size>\\0` and
its bytes, which names the same bytes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from importlib import resources
from pathlib import Path

from tvjax.data.tasks import SUITE_NAMES, TaskError
from tvjax.files import cache_root


@dataclasses.dataclass(frozen=True)
class Suite:
    """A published task suite: where its files are, at which commit, and how tasks sit in them."""

    name: str
    repo: str  # owner/name on GitHub
    commit: str
    task_of: str  # 'folder': a task is a folder of split files; 'file': a task is one file
    license: str

    @property
    def url(self) -> str:
        return f"https://codeload.github.com/{self.repo}/tar.gz/{self.commit}"

    def files(self) -> dict[str, dict]:
        """Path in the repository -> `{'sha256': ...}` (or `{'git_blob': ...}`): every file fetched."""
        return json.loads((resources.files("tvjax.data") / "suites" / f"{self.name}.json").read_text())

    def directory(self) -> Path:
        """Where the suite's files are kept once downloaded."""
        return cache_root() / "tasks" / self.name

    def tasks(self) -> dict[str, Path]:
        """Task name -> its folder or file, in the downloaded suite (a one-line error if it is not there)."""
        root = self.directory()
        if not root.is_dir():
            raise TaskError(f"task suite {self.name!r} is not downloaded: run `tvjax tasks download {self.name}` "
                            f"(offline: `--from PATH`, a clone or archive of {self.repo})")
        paths = {root / p for p in self.files()}
        found = {p.parent if self.task_of == "folder" else p for p in paths}
        return {(p.name if self.task_of == "folder" else p.stem): p for p in sorted(found)}


SUITES = {s.name: s for s in (
    Suite("site", "SNU-DRL/Soft_Injection", "750f28cca54add31237bff56f2fc8cc4c2e1a6cf", "folder", "Apache-2.0"),
    Suite("function-vectors", "ericwtodd/function_vectors", "fb9eac7b6dc707ea1475a717379916007fe448d5", "file",
          "MIT"),
)}
assert tuple(SUITES) == SUITE_NAMES  # the names tasks.load_task knows without importing this module


def suite(name: str) -> Suite:
    if name not in SUITES:
        raise TaskError(f"no task suite {name!r}; suites: {', '.join(SUITES)}")
    return SUITES[name]


def expand(spec: str) -> list[str]:
    """The task names and paths of a comma-separated `spec`, suites expanded: `site` is every
    task of the suite, `site:a,b` its tasks a and b (names after `suite:` belong to it until
    the next `suite:` or `suite`); other names (built-in tasks, task files) stay as they are."""
    out, current = [], None
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name, colon, first = item.partition(":")
        if name in SUITES:
            current, tasks = suite(name), suite(name).tasks()
            if not colon:
                out += map(str, tasks.values())
                current = None
                continue
            item = first
        elif current is None:
            out.append(item)
            continue
        tasks = current.tasks()
        if item not in tasks:
            raise TaskError(f"task suite {current.name!r} has no task {item!r}; its tasks: {', '.join(tasks)}")
        out.append(str(tasks[item]))
    return out


def download(name: str, source=None) -> Path:
    """Fetch suite `name`'s files at its pinned commit (from GitHub, or from `source`: a clone
    of the repository or an archive of it, .tar.gz / .tgz / .zip), check each against its
    pinned hash and keep them in the cache; returns the suite's folder. Nothing is kept unless
    every file checks out."""
    s = suite(name)
    read = _reader(s, source)
    target = s.directory()
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        for path, pinned in s.files().items():
            data = read(path)
            _check(s, path, data, pinned, source)
            (partial / path).parent.mkdir(parents=True, exist_ok=True)
            (partial / path).write_bytes(data)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def _check(s: Suite, path: str, data: bytes, pinned: dict, source) -> None:
    if "sha256" in pinned:
        got, want, kind = hashlib.sha256(data).hexdigest(), pinned["sha256"], "SHA-256"
    else:
        got, want, kind = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest(), pinned["git_blob"], "git blob id"
    if got != want:
        raise TaskError(f"{path} from {source or s.url} has {kind} {got}, not the pinned {want} (another commit of "
                        f"{s.repo} than {s.commit[:12]}?)")


def _reader(s: Suite, source):
    """`path in the repository -> bytes` from GitHub (the commit's archive) or from `source`."""
    if source is None:
        try:
            with urllib.request.urlopen(s.url, timeout=60) as response:
                return _archive(io.BytesIO(response.read()), s.url, "archive.tar.gz")
        except (urllib.error.URLError, OSError) as e:
            raise TaskError(f"cannot download {s.url} ({getattr(e, 'reason', e)}): on a machine without internet, "
                            f"give a clone or an archive of {s.repo} at {s.commit[:12]} with --from PATH") from None
    source = Path(source)
    if source.is_dir():
        def from_clone(path):
            file = source / path
            if not file.is_file():
                raise TaskError(f"{source} lacks {path}: --from takes a clone of {s.repo} (or an archive of it)")
            return file.read_bytes()
        return from_clone
    if not source.is_file():
        raise TaskError(f"--from {source}: no such file or folder")
    return _archive(source, str(source), source.name)


def _archive(file, where: str, name: str):
    """`path -> bytes` of a .tar.gz / .zip archive of a repository, with or without one top
    folder (GitHub's `<repo>-<commit>/`)."""
    try:
        if name.endswith(".zip"):
            archive = zipfile.ZipFile(file)
            members, get = {n: n for n in archive.namelist()}, archive.read
        else:
            archive = tarfile.open(fileobj=file, mode="r:*") if isinstance(file, io.BytesIO) else \
                tarfile.open(file, mode="r:*")
            members = {m.name: m for m in archive.getmembers() if m.isfile()}
            get = lambda member: archive.extractfile(member).read()
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as e:
        raise TaskError(f"{where} is not a readable .tar.gz or .zip archive ({e})") from None
    below_top = {n.split("/", 1)[-1]: m for n, m in members.items()}

    def read(path):
        member = members.get(path) or below_top.get(path)
        if member is None:
            raise TaskError(f"{where} lacks {path}")
        return get(member)
    return read
