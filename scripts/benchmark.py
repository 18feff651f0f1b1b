"""Benchmarks: tvjax against a PyTorch (transformers) baseline, measured side by side in one run.

    python scripts/benchmark.py forward   [--batch 8] [--length 128]   # extraction-style logits
    python scripts/benchmark.py fit-step  [--batches 1 16]              # one soft-TV training step
    python scripts/benchmark.py fit       [--task antonym] [--defaults] # means + fit + evaluation
    python scripts/benchmark.py generate  [--prompts 32 --new 16]       # greedy decoding with a TV
    python scripts/benchmark.py compile                                 # fit-step compile, L and 2L layers
    python scripts/benchmark.py fit-many  [--tasks a,b,c]               # a suite one at a time vs together
    python scripts/benchmark.py large-task [--recipe default]           # 1,500 / 200 / 500 pairs end to end
    python scripts/benchmark.py time-to-accuracy [--out DIR]            # valid accuracy vs fit time per recipe
    python scripts/benchmark.py attention [--batch 8] [--length 512]    # tvjax's attention paths, no PyTorch
    python scripts/benchmark.py all
    ... [--compile-cache DIR]    # reuse compiled programs from earlier runs (tvjax's CLI default)
    ... [--profile DIR]          # forward, fit-step, generate: tvjax's top XLA ops (jax.profiler)

The PyTorch baseline is transformers' model with hooks (`scripts/torch_reference.py`,
built on `tvjax.torch_port`), on the same token ids, batches and data order.

Timings are medians after warm-up; the ratio (PyTorch time / tvjax time) is what to
compare across machines, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time

import numpy as np

from tvjax.experiments import RECIPES, vocabulary_task

# The fit these benchmarks time (docs/benchmarks.md), fixed so that results stay comparable:
# batches of 16 with the recipe before the present FitConfig defaults (batch 1, 800 steps).
WORKLOAD = RECIPES["batch16"]
# The step counts `time-to-accuracy` fits each of these recipes for.
CURVE_STEPS = {"before": (100, 200, 400, 800), "default": (50, 100, 200, 400), "batch4": (25, 50, 100, 200, 400),
               "batch16": (13, 25, 50, 100, 200)}


def medians(ours, theirs, repeats: int) -> tuple[float, float]:
    """Median seconds of two workloads, timed alternately so machine noise hits both alike."""
    times = ([], [])
    for _ in range(repeats):
        for fn, out in zip((ours, theirs), times):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def timed(ours, theirs, args, label: str) -> tuple[float, float]:
    """`medians` of both sides; with `--profile DIR`, then a trace of tvjax's side and its top XLA ops."""
    seconds = medians(ours, theirs, args.repeats)
    if args.profile:
        profile(ours, f"{args.profile}/{label}")
    return seconds


def profile(fn, directory: str, calls: int = 3, top: int = 15) -> None:
    """Trace `calls` calls of `fn` with `jax.profiler` (Perfetto trace in `directory`); print the
    XLA ops taking the most time per call (summed over threads)."""
    import collections
    import glob
    import gzip
    import json

    import jax

    with jax.profiler.trace(directory, create_perfetto_trace=True):
        for _ in range(calls):
            fn()
    trace = sorted(glob.glob(f"{directory}/**/perfetto_trace.json.gz", recursive=True))[-1]
    events = json.load(gzip.open(trace))
    events = events["traceEvents"] if isinstance(events, dict) else events
    containers = ("$", "Thunk", "Slinky", "while", "conditional", "call")  # spans that enclose other ops
    spans = [e for e in events if e.get("ph") == "X" and not e["name"].startswith(containers)]
    total, count = collections.Counter(), collections.Counter()
    for e in spans:
        total[e["name"]] += e["dur"]
        count[e["name"]] += 1
    kinds = collections.Counter()
    for name, micros in total.items():
        kinds["matmuls" if name.startswith(("ynn", "xnn", "dot", "onednn")) else
              "slices and copies" if "slice" in name or "copy" in name or "transpose" in name else "other"] += micros
    summed = sum(total.values())
    print(f"  profile of tvjax (trace in {directory}): " +
          ", ".join(f"{kind} {micros / summed:.0%}" for kind, micros in kinds.most_common()) +
          "; top ops, ms per call:")
    for name, micros in total.most_common(top):
        print(f"    {micros / calls / 1e3:9.2f}  {count[name] // calls:4d}x  {name}")


def report(title: str, ours: float, theirs: float, unit: str = "ms", per: int = 1) -> float:
    """Print both medians (per `per` examples) and the ratio; returns torch / tvjax."""
    scale = 1e3 if unit == "ms" else 1.0
    print(title)
    print(f"  tvjax                median {ours / per * scale:9.1f} {unit}")
    print(f"  PyTorch              median {theirs / per * scale:9.1f} {unit}")
    print(f"  ratio torch / tvjax  {theirs / ours:9.2f}x", flush=True)
    return theirs / ours


class Setup:
    """The default model in tvjax and in transformers, and one task's prompts."""

    def __init__(self, task: str = "antonym"):
        import torch
        from transformers import AutoModelForCausalLM

        import tvjax
        from tvjax.batching import pad_id
        from tvjax.convert.default import default_model_dir

        directory = default_model_dir()
        self.model = tvjax.load()
        self.hf = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
        self.task = tvjax.load_task(task)
        self.pad = pad_id(self.model.tokenizer)
        print(f"default model, task {task}, float32, {_platform()}, torch threads {torch.get_num_threads()}")

    def prompts(self, split: str, shots: int = 0):
        from tvjax.data import prompts_for

        return prompts_for(self.model.tokenizer, self.task, split, shots)[0]

    def torch_pipeline(self):
        from torch_reference import TorchPipeline

        return TorchPipeline(self.hf, self.pad)


def _platform() -> str:
    import jax

    return f"{jax.devices()[0].platform} x{jax.device_count()}"


def bench_fit_step(args) -> None:
    """One soft-TV training step, forward + backward w.r.t. theta, first-answer-token loss."""
    import jax.numpy as jnp
    import torch

    from tvjax.extract import extract_means
    from tvjax.fitting import FitConfig, fit_step
    from tvjax.interventions import HeadBlend
    from tvjax.rows import prepare_rows
    from tvjax.sharding import placed
    from tvjax.train import batch_indices, optimizer

    s = Setup(args.task)
    config, params, _ = s.model
    mu = extract_means(s.model, s.task, n_prompts=8)
    train = s.prompts("train")
    rows = prepare_rows(s.model, train)
    pipeline = s.torch_pipeline()
    for B in args.batches:
        fc = FitConfig(batch_size=B)
        theta = jnp.zeros((1, config.n_layers, config.n_heads))  # one task
        state = [theta, optimizer(fc.optimizer, fc.learning_rate).init(theta)]
        steps, blend, task = iter(range(10 ** 6)), HeadBlend(None, jnp.asarray(mu)[None]), jnp.zeros(B, jnp.int32)

        def ours():
            index = jnp.asarray(batch_indices(len(train), B, next(steps), 0))
            state[0], state[1], loss = placed(fit_step(fc))(params, state[0], state[1], blend, rows, index, task,
                                                0.0, config=config)
            loss.block_until_ready()

        step, _, _ = pipeline.step_fn(torch.as_tensor(mu), fc)
        torch_steps = iter(range(10 ** 6))

        def theirs():
            batch = [train[j] for j in batch_indices(len(train), B, next(torch_steps), 0)]
            step(pipeline.batch(batch), torch.tensor([p.answer[0] for p in batch]))

        ours(), theirs()
        report(f"fit-step, batch {B}, per example", *timed(ours, theirs, args, f"fit-step-{B}"), per=B)


def bench_generate(args) -> None:
    """Greedy generation of `--new` tokens for `--prompts` prompts with a task vector."""
    import jax.numpy as jnp
    import torch

    import tvjax
    from tvjax.batching import pad_left, bucket_length
    from tvjax.extract import extract_means

    s = Setup(args.task)
    config, params, _ = s.model
    mu = extract_means(s.model, s.task, n_prompts=8)
    theta = np.zeros((config.n_layers, config.n_heads), np.float32)
    blend = tvjax.HeadBlend(jnp.asarray(theta), jnp.asarray(mu))
    prompts = (s.prompts("test") * args.prompts)[:args.prompts]
    tokens, mask = pad_left([p.ids for p in prompts], s.pad, bucket_length(max(len(p.ids) for p in prompts)))
    ours = lambda: tvjax.generate(params, tokens, config=config, mask=mask, max_new_tokens=args.new,
                                  intervention=blend)
    pipeline = s.torch_pipeline()
    theirs = lambda: pipeline.generate(prompts, torch.as_tensor(theta), torch.as_tensor(mu), args.new)
    same = np.mean(np.asarray(ours()) == theirs())
    report(f"generate, {args.prompts} prompts x {args.new} new tokens, with a task vector "
           f"({same:.0%} of tokens equal)", *timed(ours, theirs, args, "generate"))


def bench_fit(args) -> None:
    """One task end to end: means, fit, test-split evaluation; both sides the fixed workload
    (`--steps` of it), or with `--defaults` each side its own default recipe: tvjax `FitConfig()`,
    PyTorch the published one (400 steps of batch 1, Adam lr 0.2, first-token loss, the best of
    a validation every 40 steps). Prints each phase, the fit time to each side's best
    validation, its ratio and each side's test accuracy."""
    import torch

    import tvjax
    from tvjax.extract import mean_prompts
    from tvjax.evaluation import answer_budget, evaluate

    s = Setup(args.task)
    fc = tvjax.FitConfig() if args.defaults else tvjax.FitConfig(**{**WORKLOAD, "steps": args.steps})
    torch_fc = tvjax.FitConfig(**RECIPES["published"]) if args.defaults else fc
    ours = Phases()
    mu = ours.time("means", lambda: tvjax.extract_means(s.model, s.task))
    result = ours.time("fit", lambda: tvjax.fit(s.model, s.task, mu, fc))
    scores = ours.time("evaluation", lambda: evaluate(s.model, s.task, intervention=result.blend))

    pipeline = s.torch_pipeline()
    test = s.prompts("test")
    max_new = answer_budget(test)
    theirs = Phases()
    torch_mu = theirs.time("means", lambda: pipeline.means(mean_prompts(s.model.tokenizer, s.task)))
    theta, to_best = theirs.time("fit", lambda: pipeline.fit(s.prompts("train"), s.prompts("valid"), torch_mu,
                                                             torch_fc))
    accuracy = theirs.time("evaluation", lambda: pipeline.first_token_accuracy(test, theta, torch_mu, max_new))
    for phase in ours.seconds:
        print(f"  {phase:12s} tvjax {ours.seconds[phase]:7.1f} s   PyTorch {theirs.seconds[phase]:7.1f} s   "
              f"ratio {theirs.seconds[phase] / ours.seconds[phase]:6.2f}x")
    recipe = lambda c: f"{c.steps} steps of batch {c.batch_size}" + (f", {c.positions} + {c.form}" if args.defaults
                                                                      else "")
    print(f"fit to the best validation ({args.task}): tvjax {ours.seconds['fit']:.1f} s ({recipe(fc)}; the whole fit, "
          f"best step {result.best_step}), PyTorch {to_best:.1f} s ({recipe(torch_fc)}; of {theirs.seconds['fit']:.1f} "
          f"s): ratio {to_best / ours.seconds['fit']:.2f}x")
    report(f"fit end to end ({args.task}: 50 ICL prompts for the means, the fit, test evaluation); test first token "
           f"tvjax {scores.first_token:.1%} (exact match {scores.exact_match:.1%}), PyTorch {accuracy:.1%}",
           ours.total, theirs.total, unit="s")


def bench_fit_many(args) -> None:
    """A suite of tasks (default: the built-in suite) one at a time vs together (no PyTorch side).

    Per task: means, fit, zero-shot and task-vector evaluation on the test split (`fit`,
    `evaluate`), against `extract_means_many`, `fit_many` and `evaluate_many` on all tasks
    at once. Prints each task's accuracies on both sides, the phase times and the ratio.
    """
    import tvjax
    from tvjax.evaluation import evaluate_many
    from tvjax.extract import extract_means_many

    model = tvjax.load()
    names = args.tasks.split(",") if args.tasks else tvjax.builtin_names()
    tasks = [tvjax.load_task(name) for name in names]
    fc = tvjax.FitConfig(**RECIPES[args.recipe])
    print(f"default model, {len(tasks)} tasks, {fc.steps} steps of batch {fc.batch_size} per task ({args.recipe}), "
          f"{_platform()}")
    together = Phases()
    mus = together.time("means", lambda: extract_means_many(model, tasks))
    results = together.time("fit", lambda: tvjax.fit_many(model, tasks, mus, fc))
    zero = together.time("zero-shot eval", lambda: evaluate_many(model, tasks))
    steered = together.time("task-vector eval", lambda: evaluate_many(model, tasks, interventions=[r.blend for r in results]))
    alone, rows = Phases(), []
    for task, many, zero_many, tv_many in zip(tasks, results, zero, steered):
        mu = alone.add("means", lambda: tvjax.extract_means(model, task))
        blend = alone.add("fit", lambda: tvjax.fit(model, task, mu, fc).blend)
        zero_alone = alone.add("zero-shot eval", lambda: tvjax.evaluate(model, task))
        tv_alone = alone.add("task-vector eval", lambda: tvjax.evaluate(model, task, intervention=blend))
        rows.append((task.name, zero_alone, zero_many, tv_alone, tv_many))
    print("| task | zero-shot alone | together | soft TV alone | together |\n|---|---|---|---|---|")
    for name, *scores in rows:
        print(f"| {name} | " + " | ".join(f"{100 * s.first_token:.0f} / {100 * s.exact_match:.0f}" for s in scores)
              + " |")
    for phase in together.seconds:
        print(f"  {phase:18s} one at a time {alone.seconds[phase]:7.1f} s   together {together.seconds[phase]:7.1f} s"
              f"   ratio {alone.seconds[phase] / together.seconds[phase]:5.2f}x")
    print(f"suite ({len(tasks)} tasks): one at a time {alone.total:.0f} s ({len(tasks) / alone.total:.3f} tasks/s), "
          f"together {together.total:.0f} s ({len(tasks) / together.total:.3f} tasks/s), "
          f"ratio {alone.total / together.total:.2f}x", flush=True)


def bench_large_task(args) -> None:
    """One large task end to end, tvjax alone: load, means, fit, zero-shot and task-vector evaluation.

    The task is `vocabulary_task` (1,500 train / 200 valid / 500 test pairs); evaluation scores
    the first answer token, zero-shot and with the task vector on one pass over the prompts'
    prefixes (`first_token_scores`; the answers are one letter).
    Prints each phase's seconds and the valid and test first-token accuracy.
    """
    import tvjax
    from tvjax.evaluation import first_token_scores

    phases = Phases()
    model = phases.time("load", tvjax.load)
    task = vocabulary_task(model.tokenizer)
    settings = tvjax.FitConfig(**RECIPES[args.recipe])
    print(f"default model, {task.name} ({len(task.train)} / {len(task.valid)} / {len(task.test)} pairs), recipe "
          f"{args.recipe}: {settings.steps} steps of batch {settings.batch_size}, means of {args.n_prompts} prompts, "
          f"{_platform()}")
    mu = phases.time("means", lambda: tvjax.extract_means(model, task, n_prompts=args.n_prompts))
    result = phases.time("fit", lambda: tvjax.fit(model, task, mu, settings))
    zero, steered = phases.time("evaluation", lambda: first_token_scores(model, task, [None, result.blend]))
    valid = next(h for h in result.history if h["step"] == result.best_step)["valid_first_token"]
    for phase, seconds in phases.seconds.items():
        print(f"  {phase:18s} {seconds:6.1f} s")
    print(f"total {phases.total:.1f} s; first token: zero-shot {zero.first_token:.1%}, task vector "
          f"{steered.first_token:.1%} (test), {valid:.1%} (valid); best step {result.best_step}", flush=True)


def bench_time_to_accuracy(args) -> None:
    """Valid accuracy against fit time, per recipe, on `--task` (`vocabulary`: the large task; no PyTorch side).

    Each recipe (`tvjax.experiments.RECIPES`) fits the task for each of its `CURVE_STEPS`, one
    fit per point (row preparation, steps, validation every tenth of the run, the best-valid
    vector kept: what a user waits for), on the same means; `lbfgs` is `lbfgs_fit` for each of
    `LBFGS_ITERATIONS`. Each point's valid first token is its fit's best validation, its exact
    match an evaluation of the vector on the valid split (not timed). Prints a Markdown table and
    when the first curve's last accuracy is reached by each other curve; writes
    `<out>/time_to_accuracy_<task>.png` and `.json`.
    """
    import json
    from pathlib import Path

    from matplotlib.figure import Figure

    import tvjax

    model = tvjax.load()
    task = vocabulary_task(model.tokenizer) if args.task == "vocabulary" else tvjax.load_task(args.task)
    mu = tvjax.extract_means(model, task)
    curves = {}
    print(f"default model, {task.name}, {_platform()}\n| recipe | steps | fit s | valid first token | valid exact |\n"
          f"|---|---|---|---|---|")
    for name in args.curves.split(","):
        for label, steps, fitted in _curve_points(model, task, mu, name):
            start = time.perf_counter()
            accuracy, blend = fitted()
            seconds = time.perf_counter() - start
            exact = None if blend is None else tvjax.evaluate(model, task, intervention=blend, split="valid").exact_match
            curves.setdefault(name, []).append({"steps": steps, "seconds": seconds, "valid_first_token": accuracy,
                                                "valid_exact_match": exact})
            print(f"| {label} | {steps} | {seconds:.1f} | {100 * accuracy:.1f} | "
                  f"{'-' if exact is None else f'{100 * exact:.1f}'} |", flush=True)
    (first, reference), *others = curves.items()
    goal = reference[-1]
    for name, points in others:
        reached = next((p for p in points if p["valid_first_token"] >= goal["valid_first_token"]), None)
        print(f"{name} reaches {first}'s last valid first token ({100 * goal['valid_first_token']:.1f}% in "
              f"{goal['seconds']:.1f} s) " + ("never" if reached is None else
                                              f"at {reached['steps']} steps in {reached['seconds']:.1f} s: "
                                              f"{reached['seconds'] / goal['seconds']:.2f} of the time"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"time_to_accuracy_{task.name}"
    path.with_suffix(".json").write_text(json.dumps({"task": task.name, "curves": curves}, indent=2))
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    for name, points in curves.items():
        axes.plot([p["seconds"] for p in points], [100 * p["valid_first_token"] for p in points], "o-", label=name)
    axes.set(xlabel="fit seconds (row preparation + steps + validation)", ylabel="valid first-token accuracy (%)",
             title=f"time to accuracy: {task.name}")
    axes.legend()
    figure.savefig(path.with_suffix(".png"), dpi=120, bbox_inches="tight")
    print(f"wrote {path.with_suffix('.png')} and {path.with_suffix('.json')}")


LBFGS_ROWS, LBFGS_ITERATIONS = 256, (5, 10, 20, 40)


def _curve_points(model, task, mu, name: str):
    """`(label, steps, fit -> (valid first-token accuracy, the vector or None))` of each point of
    curve `name`: a recipe of `RECIPES` at each of its `CURVE_STEPS` (the best-valid step's
    accuracy), or `lbfgs`."""
    import tvjax

    if name == "lbfgs":
        for iterations in LBFGS_ITERATIONS:
            yield (f"lbfgs (full batch of {LBFGS_ROWS} rows)", iterations,
                   lambda iterations=iterations: (lbfgs_fit(model, task, mu, iterations), None))
        return
    for steps in CURVE_STEPS[name]:
        settings = tvjax.FitConfig(**{**RECIPES[name], "steps": steps, "eval_every": max(1, steps // 10)})

        def fitted(settings=settings):
            result = tvjax.fit(model, task, mu, settings)
            return next(h for h in result.history if h["step"] == result.best_step)["valid_first_token"], result.blend

        yield (f"{name} (batch {settings.batch_size}, lr {settings.learning_rate}, {settings.positions} + "
               f"{settings.form})", steps, fitted)


def lbfgs_fit(model, task, mu, iterations: int, n_rows: int = LBFGS_ROWS) -> float:
    """Valid first-token accuracy of theta fitted by full-batch L-BFGS (`optax.lbfgs`, zoom line
    search) on `n_rows` train rows for `iterations` iterations, from theta 0 (row preparation
    included, as in `fit`; the last theta, no best-step keeping)."""
    import jax
    import jax.numpy as jnp
    import optax

    from tvjax import HeadBlend
    from tvjax.data import prompts_for
    from tvjax.rows import prepare_rows, row_losses, scores

    config, params, tokenizer = model
    train = prepare_rows(model, prompts_for(tokenizer, task, "train", 0)[0][:n_rows])
    valid = prepare_rows(model, prompts_for(tokenizer, task, "valid", 0)[0])
    mu = jnp.asarray(mu)
    solver = optax.lbfgs()

    @jax.jit
    def run(theta, params, rows):
        loss = lambda theta: row_losses(params, config, HeadBlend(theta, mu), rows).mean()
        value_and_grad = optax.value_and_grad_from_state(loss)

        def body(_, carry):
            theta, state = carry
            value, grad = value_and_grad(theta, state=state)
            updates, state = solver.update(grad, state, theta, value=value, grad=grad, value_fn=loss)
            return optax.apply_updates(theta, updates), state

        return jax.lax.fori_loop(0, iterations, body, (theta, solver.init(theta)))[0]

    theta = run(jnp.zeros((config.n_layers, config.n_heads)), params, train)
    return float(np.mean(scores(params, HeadBlend(theta, mu), valid, config=config)[1]))


class Phases:
    """Wall time of each named phase of a pipeline (first calls: compiles included)."""

    def __init__(self):
        self.seconds = {}

    def time(self, phase: str, fn):
        start = time.perf_counter()
        out = fn()
        self.seconds[phase] = time.perf_counter() - start
        return out

    def add(self, phase: str, fn):
        """`time`, adding to the phase's earlier time (a phase run once per task)."""
        before = self.seconds.get(phase, 0.0)
        out = self.time(phase, fn)
        self.seconds[phase] += before
        return out

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def bench_compile(args) -> None:
    """Trace + lower + compile of the fit step on abstract shapes, for L and 2L layers."""
    import jax
    import jax.numpy as jnp

    import tvjax
    from tvjax.fitting import FitConfig, fit_step
    from tvjax.interventions import HeadBlend
    from tvjax.rows import prepare_rows
    from tvjax.train import optimizer

    base = tvjax.load()
    train = tvjax.data.prompts_for(base.tokenizer, tvjax.load_task(args.task), "train", 0)[0]
    rows = jax.eval_shape(lambda: prepare_rows(base, train))  # [L, R, S, K, H] caches
    fc, lowerings = FitConfig(**WORKLOAD), {}
    for L in (base.config.n_layers, 2 * base.config.n_layers):
        config = base.config.replace(n_layers=L)
        shape = lambda x: jax.ShapeDtypeStruct((L, *x.shape[1:]), x.dtype)
        layered = rows._replace(cache=rows.cache._replace(k=shape(rows.cache.k), v=shape(rows.cache.v)))
        theta = jax.ShapeDtypeStruct((1, L, config.n_heads), jnp.float32)  # one task
        blend = HeadBlend(None, jax.ShapeDtypeStruct((1, L, config.n_heads, config.head_dim), jnp.float32))
        params = jax.eval_shape(lambda: tvjax.init_params(config, jax.random.key(0)))
        opt_state = jax.eval_shape(optimizer(fc.optimizer, fc.learning_rate).init, theta)
        index = jax.ShapeDtypeStruct((fc.batch_size,), jnp.int32)
        lowering = fit_step(fc).lower  # bound now: the loop's variables change
        lowerings[L] = functools.partial(lambda *a, **k: lowering(*a, **k).compile(), params, theta, opt_state,
                                         blend, layered, index, index, 0.0, config=config)
    times = {L: [] for L in lowerings}
    for _ in range(args.rounds):  # alternate, so machine noise hits both alike
        for L, compile_step in lowerings.items():
            jax.clear_caches()
            start = time.perf_counter()
            compile_step()
            times[L].append(time.perf_counter() - start)
    (l1, t1), (l2, t2) = ((L, statistics.median(t)) for L, t in times.items())
    print(f"compile of the fit step (trace + lower + compile, median of {args.rounds}): {l1} layers {t1:.2f} s, "
          f"{l2} layers {t2:.2f} s, ratio {t2 / t1:.2f}x", flush=True)


def bench_forward(args) -> None:
    """Logits of a batch of long prompts (extraction-style forward), plain model."""
    import jax.numpy as jnp
    import torch

    import tvjax

    s = Setup(args.task)
    config, params, _ = s.model
    tokens = np.random.default_rng(0).integers(100, config.vocab_size, size=(args.batch, args.length))
    jax_tokens, torch_tokens = jnp.asarray(tokens), torch.as_tensor(tokens)
    ours = lambda: tvjax.forward(params, jax_tokens, config=config).logits.block_until_ready()

    def theirs():
        with torch.inference_mode():
            s.hf(torch_tokens).logits

    start = time.perf_counter()
    ours()
    first = time.perf_counter() - start
    theirs()
    report(f"forward, batch {args.batch} x {args.length} tokens, logits at every position "
           f"(tvjax first call: trace + compile + run {first:.1f} s)", *timed(ours, theirs, args, "forward"))


def bench_attention(args) -> None:
    """The means forward under each attention path (no PyTorch): einsum, dot_product, query blocks."""
    import jax.numpy as jnp

    import tvjax
    from tvjax.extract import _last_token_sites

    config, params, _ = tvjax.load()
    print(f"default model, float32, {_platform()}")
    tokens = jnp.asarray(np.random.default_rng(0).integers(100, config.vocab_size, size=(args.batch, args.length)))
    mask = jnp.ones(tokens.shape, bool)
    paths = {"einsum": dict(attention_chunk=None), "dot_product": dict(attention="dot_product", attention_chunk=None),
             f"einsum, blocks of {args.length // 4}": dict(attention_chunk=args.length // 4),
             f"dot_product, blocks of {args.length // 4}": dict(attention="dot_product",
                                                                attention_chunk=args.length // 4)}
    runs = {name: (lambda c=config.replace(**changes): _last_token_sites(params, tokens, mask, config=c,
                                                                         sites=("heads",))["heads"].block_until_ready())
            for name, changes in paths.items()}
    for run in runs.values():
        run()
    times = {name: [] for name in runs}
    for _ in range(args.repeats):  # alternated, so machine noise hits every path alike
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["einsum"])
    print(f"means forward, batch {args.batch} x {args.length} tokens, heads at the last token:")
    for name, t in times.items():
        median = statistics.median(t)
        print(f"  {name:28s} median {median * 1e3:8.1f} ms  einsum / this {base / median:5.2f}x", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="workload", required=True)
    workloads = {"forward": bench_forward, "fit-step": bench_fit_step, "fit": bench_fit,
                 "generate": bench_generate, "compile": bench_compile, "fit-many": bench_fit_many,
                 "attention": bench_attention, "large-task": bench_large_task,
                 "time-to-accuracy": bench_time_to_accuracy}
    for name, run in [*workloads.items(), ("all", lambda args: [w(args) for w in workloads.values()])]:
        p = sub.add_parser(name, help=(run.__doc__ or "every workload in turn").splitlines()[0])
        p.add_argument("--task", default="antonym", help="a built-in task (time-to-accuracy: or vocabulary, "
                                                          "the large task)")
        p.add_argument("--repeats", type=int, default=10)
        p.add_argument("--batch", type=int, default=8, help="forward: prompts")
        p.add_argument("--length", type=int, default=128, help="forward: tokens per prompt")
        p.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="fit-step: batch sizes")
        p.add_argument("--prompts", type=int, default=32, help="generate: prompts")
        p.add_argument("--new", type=int, default=16, help="generate: new tokens")
        p.add_argument("--steps", type=int, default=100, help="fit: training steps")
        p.add_argument("--defaults", action="store_true",
                       help="fit: each side its own default recipe (tvjax FitConfig(), PyTorch the published one)")
        p.add_argument("--rounds", type=int, default=3, help="compile: compilations per depth")
        p.add_argument("--tasks", default=None, help="fit-many: comma-separated tasks (default: the built-in suite)")
        p.add_argument("--recipe", default="default", choices=sorted(RECIPES), help="fit-many, large-task: the fit")
        p.add_argument("--out", default="results/benchmarks", help="time-to-accuracy: the PNG and JSON")
        p.add_argument("--curves", default="before,default",
                       help="time-to-accuracy: recipes to time (CURVE_STEPS' names, and lbfgs); the others are "
                            "measured against the first")
        p.add_argument("--n-prompts", type=int, default=50, help="large-task: ICL prompts averaged for the means")
        p.add_argument("--profile", default=None, metavar="DIR",
                       help="forward, fit-step, generate: also trace tvjax's side and print its top XLA ops")
        p.add_argument("--compile-cache", default=None, metavar="DIR",
                       help="persistent XLA compilation cache (default: none, every run compiles)")
        p.set_defaults(run=run)
    args = parser.parse_args(argv)
    if args.profile:  # XLA:CPU names its ops in traces only with this flag, read when the backend starts
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_enable_xprof_traceme=true"
    if args.compile_cache is not None:
        from tvjax.compile_cache import enable_compilation_cache

        enable_compilation_cache(args.compile_cache)
    args.run(args)


if __name__ == "__main__":
    sys.exit(main())
