"""Where tvjax writes: its cache, and output files, their folder checked before the work
starts, each file written atomically (a temporary file renamed over it), so an interrupted
run leaves the old file or the new one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def cache_root() -> Path:
    """tvjax's cache: `$TVJAX_CACHE`, else `$XDG_CACHE_HOME/tvjax`, else `~/.cache/tvjax`."""
    if os.environ.get("TVJAX_CACHE"):
        return Path(os.environ["TVJAX_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tvjax"


def check_output_dir(directory, flag: str = "out") -> Path:
    """`directory` if files can be written into it (it, or the folders to be made for it), else a
    ValueError naming `flag`; nothing is left behind."""
    directory = Path(directory)
    missing = [p for p in (directory, *directory.parents) if not p.exists()]
    existing = directory.parents[len(missing) - 1] if missing else directory
    if not existing.is_dir():
        raise ValueError(f"{flag} {directory}: {existing} is a file, not a folder")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise ValueError(f"{flag} {directory}: cannot write there ({e.strerror or e})") from None
    finally:
        for folder in missing:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
    return directory


@contextlib.contextmanager
def replacing(path):
    """Yield a temporary path beside `path` (same suffix) to write; on success it replaces `path`
    (its folders made, its mode the usual one for a new file), on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path, text: str) -> Path:
    """Write `text` to `path` atomically (`replacing`)."""
    with replacing(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
