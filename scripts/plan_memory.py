"""Per-device memory of the fit step or of means extraction on a device mesh, from XLA's own
compiled memory analysis.

No weights needed: `tvjax.fitting.fit_step` (or the means' forward) is lowered on abstract
shapes (`jax.ShapeDtypeStruct`) with the shardings a real run uses, over simulated CPU devices,
compiled, and `compiled.memory_analysis()` read for one device.

    .venv/bin/python scripts/plan_memory.py scripts/configs/llama-3.1-405b.json --mesh fsdp=64,tensor=4
    .venv/bin/python scripts/plan_memory.py scripts/configs/*.json --mesh fsdp=64,tensor=4 --markdown
    .venv/bin/python scripts/plan_memory.py scripts/configs/llama-3.1-8b.json --step means --mesh fsdp=8 \
        --batch-size 8 --prompt-length 2048,8192 --attention einsum,dot_product --attention-chunk none,1024 --markdown

A config is a Hugging Face config.json, a checkpoint directory or a hub id. Defaults: bfloat16
params and activations (blend math and loss in float32), full per-layer remat, 512 cached
training prompts of 32 prefix tokens, batch 16. The means step runs `--batch-size` ICL prompts
of `--prompt-length` tokens through the model, capturing the heads at the last token, for each
attention implementation and query-block size given. XLA:CPU's buffer assignment stands in
for the accelerator's: expect the same order of magnitude, not the same bytes (and XLA's
`dot_product_attention`, not cuDNN's fused kernel, which never holds the scores).
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


def plan(name: str, mesh, *, step: str, dtype: str, remat: str | None, attention: str, chunk: int | None,
         rows: int, prompt_length: int, batch_size: int) -> dict:
    """Compile the sharded `step` ('fit' or 'means') for the model `name` on abstract shapes; its
    per-device memory."""
    import jax

    from tvjax.convert.architectures import config_from_hf

    config = config_from_hf(hf_config(name)).replace(dtype=dtype, remat=remat, attention=attention,
                                                     attention_chunk=chunk)
    params = jax.eval_shape(lambda key: tvjax.init_params(config, key), jax.random.PRNGKey(0))
    start = time.perf_counter()
    lower = _lower_fit if step == "fit" else _lower_means
    memory = lower(mesh, config, params, rows=rows, prompt_length=prompt_length, batch_size=batch_size)
    memory = memory.compile().memory_analysis()
    seconds = time.perf_counter() - start
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    return {"model": Path(name).stem, "step": step, "params": n_params,
            "task_vector": config.n_layers * config.n_heads, "mesh": dict(mesh.shape), "attention": attention,
            "attention_chunk": chunk, "prompt_length": prompt_length, "batch_size": batch_size,
            "arguments": memory.argument_size_in_bytes, "outputs": memory.output_size_in_bytes,
            "temporaries": memory.temp_size_in_bytes, "aliased": memory.alias_size_in_bytes,
            "total": memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
            - memory.alias_size_in_bytes, "compile_seconds": seconds}


def _lower_fit(mesh, config, params, *, rows: int, prompt_length: int, batch_size: int):
    """The fit step on `rows` cached prompts of `prompt_length` prefix tokens, `batch_size` a step."""
    import jax
    import jax.numpy as jnp

    from tvjax.fitting import FitConfig, lower_train_step
    from tvjax.interventions import HeadBlend
    from tvjax.model import KVCache
    from tvjax.rows import Rows
    from tvjax.train import optimizer

    L, N, K, H = config.n_layers, config.n_heads, config.n_kv_heads, config.head_dim
    S, Ts = prompt_length + 1, 1
    sds = jax.ShapeDtypeStruct
    theta = sds((1, L, N), jnp.float32)  # one task
    opt_state = jax.eval_shape(optimizer("adam", 0.3).init, theta)
    kv = sds((L, rows, S, K, H), config.jnp_dtype)
    cache = KVCache(kv, kv, sds((rows, S), jnp.bool_), sds((), jnp.int32))
    suffix = sds((rows, Ts), jnp.int32), sds((rows, Ts), jnp.bool_)
    data = Rows(cache, *suffix, *suffix)
    index = sds((batch_size,), jnp.int32)
    return lower_train_step(mesh, theta, opt_state, params, HeadBlend(None, sds((1, L, N, H), jnp.float32)), data,
                            index, index, sds((), jnp.float32), config=config,
                            settings=FitConfig(learning_rate=0.3, optimizer="adam"))


def _lower_means(mesh, config, params, *, rows: int, prompt_length: int, batch_size: int):
    """One batch of the means' forward: `batch_size` prompts of `prompt_length` tokens."""
    import jax
    import jax.numpy as jnp

    from tvjax.extract import lower_last_token_sites

    shape = (batch_size, prompt_length)
    return lower_last_token_sites(mesh, params, jax.ShapeDtypeStruct(shape, jnp.int32),
                                  jax.ShapeDtypeStruct(shape, jnp.bool_), config=config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", help="config.json files, checkpoint directories or hub ids")
    parser.add_argument("--step", default="fit", choices=("fit", "means"),
                        help="the fit step on cached prompts, or one batch of means extraction")
    parser.add_argument("--mesh", default="fsdp=64,tensor=4", help="mesh axis sizes (their product: the devices)")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--remat", default="full", choices=("none", "full", "dots", "dots_no_batch"))
    parser.add_argument("--attention", default="einsum", help="implementations, comma-separated: einsum, dot_product")
    parser.add_argument("--attention-chunk", default="1024",
                        help="query-block sizes, comma-separated ('none': all queries at once)")
    parser.add_argument("--rows", type=int, default=512, help="cached training prompts R (fit)")
    parser.add_argument("--prompt-length", default="32",
                        help="tokens per prompt, comma-separated (fit: cached prefix tokens; means: ICL prompt)")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per step")
    parser.add_argument("--markdown", action="store_true", help="print a README table")
    args = parser.parse_args()
    shape = parse_mesh(args.mesh)
    devices = math.prod(shape.values())
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from tvjax.sharding import make_mesh

    mesh = make_mesh(shape)
    print(f"{args.step} step, {devices} devices {args.mesh}, {args.dtype}, remat {args.remat}, batch "
          f"{args.batch_size}; GiB per device", file=sys.stderr)
    chunks = [None if c.lower() == "none" else int(c) for c in args.attention_chunk.split(",")]
    results = [plan(name, mesh, step=args.step, dtype=args.dtype, remat=None if args.remat == "none" else args.remat,
                    attention=attention, chunk=chunk, rows=args.rows, prompt_length=int(length),
                    batch_size=args.batch_size)
               for name in args.configs for length in args.prompt_length.split(",")
               for attention in args.attention.split(",") for chunk in chunks]
    if args.markdown:
        print("| model | attention | query blocks | prompt tokens | arguments | temporaries | total |")
        print("|---|---|---|---|---|---|---|")
        for r in results:
            blocks = r["attention_chunk"] or "all at once"
            print(f"| {r['model']} | {r['attention']} | {blocks} | {r['prompt_length']:,} | {r['arguments'] / GIB:.2f}"
                  f" GiB | {r['temporaries'] / GIB:.2f} GiB | {r['total'] / GIB:.2f} GiB |")
    else:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
