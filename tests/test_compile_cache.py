"""The persistent compilation cache, through the CLI flag that turns it on (in fresh processes)."""

import os
import subprocess
import sys


def test_compile_cache_is_written_then_reused(tmp_path, tiny_lm_dir):
    """`--compile-cache DIR` stores compiled programs; a second process loads them and prints the same."""
    cache = tmp_path / "xla"
    run = [sys.executable, "-m", "tvjax.cli", "generate", "--model", str(tiny_lm_dir), "--prompt", "Q: hot\nA:",
           "--max-new-tokens", "3", "--compile-cache", str(cache)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    first = subprocess.run(run, capture_output=True, text=True, env=env, check=True)
    entries = sorted(p.name for p in cache.iterdir())
    assert any(name.startswith("jit__decode") for name in entries), entries
    second = subprocess.run(run, capture_output=True, text=True, env=env, check=True)
    assert second.stdout == first.stdout and "->" in first.stdout
    assert sorted(p.name for p in cache.iterdir()) == entries  # hits: nothing new compiled


def test_a_users_jax_compilation_cache_dir_is_respected(tmp_path):
    code = "from tvjax.compile_cache import enable_compilation_cache; print(enable_compilation_cache())"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "mine")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == str(tmp_path / "mine")
