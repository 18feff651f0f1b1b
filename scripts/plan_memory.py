"""Per-device memory of the fit step on a device mesh, from XLA's own compiled memory analysis.

No weights needed: `tvjax.fitting.train_step` is lowered on abstract shapes (`jax.ShapeDtypeStruct`)
with the shardings a real run uses, over simulated CPU devices, compiled, and
`compiled.memory_analysis()` read for one device.

    .venv/bin/python scripts/plan_memory.py scripts/configs/llama-3.1-405b.json --mesh fsdp=64,tensor=4
    .venv/bin/python scripts/plan_memory.py scripts/configs/*.json --mesh fsdp=64,tensor=4 --markdown

A config is a Hugging Face config.json, a checkpoint directory or a hub id. Defaults: bfloat16
params and activations (blend math and loss in float32), full per-layer remat, 512 cached
training prompts of 32 prefix tokens, batch 16. XLA:CPU's buffer assignment stands in for the
accelerator's: expect the same order of magnitude, not the same bytes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import tvjax  # before the device-count flag is read: jax reads XLA_FLAGS when it first needs devices
from tvjax.sharding import parse_mesh

GIB = 2**30


def hf_config(name: str) -> dict:
    """config.json of a file, a checkpoint directory or a hub id (only config.json is fetched)."""
    from tvjax.convert.hf import read_config

    path = Path(name)
    if path.is_file():
        return json.loads(path.read_text())
    if not path.is_dir():
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(name, "config.json")).parent
    return read_config(path)


def plan(name: str, mesh, *, dtype: str, remat: str | None, rows: int, prompt_length: int, batch_size: int) -> dict:
    """Compile the sharded fit step for the model `name` on abstract shapes; its per-device memory."""
    import jax
    import jax.numpy as jnp

    from tvjax.convert.architectures import config_from_hf
    from tvjax.fitting import lower_train_step
    from tvjax.rows import Rows
    from tvjax.train import optimizer
    from tvjax.model import KVCache

    config = config_from_hf(hf_config(name)).replace(dtype=dtype, remat=remat)
    L, N, K, H = config.n_layers, config.n_heads, config.n_kv_heads, config.head_dim
    S, Ts = prompt_length + 1, 1
    sds = jax.ShapeDtypeStruct
    params = jax.eval_shape(lambda key: tvjax.init_params(config, key), jax.random.PRNGKey(0))
    theta = sds((L, N), jnp.float32)
    opt_state = jax.eval_shape(optimizer("adam", 0.3).init, theta)
    kv = sds((L, rows, S, K, H), config.jnp_dtype)
    cache = KVCache(kv, kv, sds((rows, S), jnp.bool_), sds((), jnp.int32))
    suffix = sds((rows, Ts), jnp.int32), sds((rows, Ts), jnp.bool_)
    data = Rows(cache, *suffix, *suffix)
    start = time.perf_counter()
    lowered = lower_train_step(mesh, theta, opt_state, sds((L, N, H), jnp.float32), params, data,
                               sds((batch_size,), jnp.int32), sds((), jnp.float32), config=config,
                               learning_rate=0.3, optimizer_name="adam")
    memory = lowered.compile().memory_analysis()
    seconds = time.perf_counter() - start
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    return {"model": Path(name).stem, "params": n_params, "task_vector": L * N, "mesh": dict(mesh.shape),
            "arguments": memory.argument_size_in_bytes, "outputs": memory.output_size_in_bytes,
            "temporaries": memory.temp_size_in_bytes, "aliased": memory.alias_size_in_bytes,
            "total": memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
            - memory.alias_size_in_bytes, "compile_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", help="config.json files, checkpoint directories or hub ids")
    parser.add_argument("--mesh", default="fsdp=64,tensor=4", help="mesh axis sizes (their product: the devices)")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--remat", default="full", choices=("none", "full", "dots", "dots_no_batch"))
    parser.add_argument("--rows", type=int, default=512, help="cached training prompts R")
    parser.add_argument("--prompt-length", type=int, default=32, help="cached prefix tokens per prompt")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--markdown", action="store_true", help="print a README table")
    args = parser.parse_args()
    shape = parse_mesh(args.mesh)
    devices = math.prod(shape.values())
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from tvjax.sharding import make_mesh

    mesh = make_mesh(shape)
    print(f"fit step, {devices} devices {args.mesh}, {args.dtype}, remat {args.remat}, {args.rows} cached prompts "
          f"of {args.prompt_length} tokens, batch {args.batch_size}; GiB per device", file=sys.stderr)
    results = [plan(name, mesh, dtype=args.dtype, remat=None if args.remat == "none" else args.remat,
                    rows=args.rows, prompt_length=args.prompt_length, batch_size=args.batch_size)
               for name in args.configs]
    if args.markdown:
        print("| model | params | task-vector params | arguments | temporaries | total |")
        print("|---|---|---|---|---|---|")
        for r in results:
            print(f"| {r['model']} | {r['params'] / 1e9:.1f} B | {r['task_vector']:,} | {r['arguments'] / GIB:.2f} GiB"
                  f" | {r['temporaries'] / GIB:.2f} GiB | {r['total'] / GIB:.2f} GiB |")
    else:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
