"""The `tvjax` command: fit, eval, generate, tasks, compare, plot."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
import time
from pathlib import Path

from tvjax.config import ATTENTION, REMAT_POLICIES
from tvjax.data.tasks import SUITE_NAMES, TaskError
from tvjax.fields import COUNT, FINITE, SEED, Allowed, number
from tvjax.files import check_output_dir, write_text
from tvjax.flags import Parser, add_config_flags, checked, config_from_flags
from tvjax.methods import BASELINES, METHODS


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a flag refused in one line
        return e.code
    try:
        for plugin in args.plugin + [m for m in os.environ.get("TVJAX_PLUGINS", "").split(",") if m.strip()]:
            importlib.import_module(plugin.strip())
        if getattr(args, "compile_cache", "off") != "off":
            from tvjax.compile_cache import enable_compilation_cache

            enable_compilation_cache(None if args.compile_cache == "default" else args.compile_cache)
        args.run(args)
    except (TaskError, ValueError, OSError, ImportError) as e:  # our errors are ValueErrors with the fix in them
        print(f"tvjax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # a fit's `Interrupted` says where it stopped and how to go on
        print(f"tvjax {args.command}: {e or 'interrupted'}", file=sys.stderr)
        return 130
    return 0


def build_parser() -> argparse.ArgumentParser:
    from tvjax.compare import CompareConfig
    from tvjax.fitting import FitConfig

    from tvjax.version import __version__

    parser = Parser(prog="tvjax", description="Task vectors for language models in JAX.")
    parser.add_argument("--version", action="version", version=f"tvjax {__version__}")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (repeatable; also $TVJAX_PLUGINS, comma-separated): it may register "
                             "intervention kinds (tvjax.register_kind) and methods (tvjax.methods.register_method)")
    sub = parser.add_subparsers(dest="command", required=True)
    model_help = ("default model (smollm2-135m), gemma-3-270m (the gemma extra), a checkpoint directory, "
                  "a .gguf file or a hub id")

    tasks = sub.add_parser("tasks", help="list the built-in tasks and the published suites; download a suite")
    tasks.set_defaults(run=cmd_tasks, suite=None)
    download = tasks.add_subparsers(dest="action").add_parser(
        "download", help="fetch a published suite's task files at its pinned commit, each checked against its "
                         "pinned hash, into the tvjax cache; then --task / --tasks SUITE or SUITE:TASK,...")
    download.add_argument("suite", choices=SUITE_NAMES, help="site (57 tasks with splits) or function-vectors")
    download.add_argument("--from", dest="source", default=None, metavar="PATH",
                          help="a clone of the suite's repository, or an archive of it (.tar.gz, .zip), instead "
                               "of GitHub (default: GitHub)")

    fit = sub.add_parser("fit", help="extract means, fit a soft task vector, evaluate, save")
    fit.add_argument("--task", required=True, help="built-in task name or a task file / directory; several, "
                                                    "comma-separated, are fitted together in shared batches")
    fit.add_argument("--model", default=None, help=model_help)
    fit.add_argument("--out", default="results", help="directory for <task>.safetensors and <task>.json")
    add_config_flags(fit, CompareConfig(), skip=_NOT_FIT_FLAGS)
    fit.add_argument("--template", default=None, help="prompt template with {input} and {output}; \\n and \\t as "
                                                      "typed are a line break and a tab (default: the standard one)")
    _add_demos_flag(fit)
    _add_baselines_flag(fit)
    add_config_flags(fit.add_argument_group("fitting (tvjax.fitting.FitConfig)"), FitConfig())
    fit.add_argument("--checkpoint-dir", default=None,
                     help="save Orbax checkpoints of the fit here (with --resume, default <out>/checkpoints/<task>; "
                          "for several tasks fitted together, <out>/checkpoints/<task1>+<task2>+...)")
    fit.add_argument("--resume", action="store_true", help="continue from the latest checkpoint (start one if there is none)")
    _add_scale_flags(fit)
    _add_compile_cache_flag(fit)
    fit.set_defaults(run=cmd_fit)

    ev = sub.add_parser("eval", help="zero-shot, ICL and (with --tv) task-vector accuracy")
    ev.add_argument("--task", default=None, help="default: the task the task vector records")
    ev.add_argument("--model", default=None, help=model_help + " (default: the one the task vector records)")
    ev.add_argument("--intervention", "--tv", dest="tv", default=None, metavar="FILE",
                    help="an intervention file: a task vector from `tvjax fit`, or any kind `tvjax compare` writes")
    ev.add_argument("--out", default="results", help="directory for <task>.eval.json and <task>.eval.csv")
    ev.add_argument("--shots", type=checked(int, COUNT), default=10, metavar="INT",
                    help="demonstrations per prompt of the ICL baseline")
    ev.add_argument("--split", default="test", choices=("train", "valid", "test"), help="the split scored")
    ev.add_argument("--seed", type=checked(int, SEED), default=None, metavar="INT",
                    help="split seed (default: the task vector's, else 0)")
    ev.add_argument("--template", default=None, help="default: the task vector's, else the standard one")
    _add_demos_flag(ev)
    ev.add_argument("--first-token-only", action="store_true",
                    help="score the first answer token alone: one forward per batch instead of generating")
    _add_strength_flag(ev)
    _add_scale_flags(ev)
    _add_compile_cache_flag(ev)
    ev.set_defaults(run=cmd_eval)

    gen = sub.add_parser("generate", help="generation (greedy, or sampled), with or without a task vector")
    what = gen.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="raw prompt text (\\n and \\t as typed are a line break and a tab)")
    what.add_argument("--query", nargs="+", help="inputs written with the template, e.g. --query fast hot")
    gen.add_argument("--model", default=None, help=model_help + " (default: the one the task vector records)")
    gen.add_argument("--intervention", "--tv", dest="tv", default=None, metavar="FILE",
                     help="an intervention file of any kind (applied at the last prompt token)")
    gen.add_argument("--max-new-tokens", type=checked(int, COUNT), default=16, metavar="INT",
                     help="tokens generated at most")
    gen.add_argument("--template", default=None, help="for --query, and the default --stop (default: the task "
                                                      "vector's)")
    gen.add_argument("--stop", nargs="*", default=None, metavar="TEXT",
                     help="end each answer at the first of these strings (\\n typed is a line break); a bare --stop: "
                          "never (default: the template's separator, as the fit ends answers)")
    gen.add_argument("--temperature", type=checked(float, number(0)), default=0.0, metavar="FLOAT",
                     help="sample at this temperature (0: greedy)")
    gen.add_argument("--top-k", type=checked(int, COUNT), default=None, metavar="INT",
                     help="sample among the k most likely tokens (default: all)")
    gen.add_argument("--top-p", type=checked(float, Allowed(lambda p: 0 < p <= 1, "a number in (0, 1]")),
                     default=None, metavar="FLOAT", help="sample among the most likely tokens whose probability "
                                                         "reaches p (default: all)")
    gen.add_argument("--seed", type=checked(int, SEED), default=0, metavar="INT", help="the sampling seed")
    _add_strength_flag(gen)
    _add_scale_flags(gen)
    _add_compile_cache_flag(gen)
    gen.set_defaults(run=cmd_generate)

    cmp = sub.add_parser("compare", help="zero-shot, ICL, layer patching, function vector, REINFORCE and soft TV "
                                         "on a set of tasks: Markdown table, JSON, bar chart")
    cmp.add_argument("--tasks", default=None, help="comma-separated names / task files, or a directory of task "
                                                   "files (default: the built-in suite)")
    cmp.add_argument("--model", default=None, help=model_help)
    cmp.add_argument("--methods", default=None,
                     help=f"comma-separated subset of {', '.join(METHODS)} (default: all)")
    _add_baselines_flag(cmp)
    cmp.add_argument("--out", default="results/compare", help="writes compare.{md,json,png} and tasks/<task>.json")
    cmp.add_argument("--redo", action="store_true", help="recompute tasks that already have results in --out")
    defaults = CompareConfig()
    add_config_flags(cmp, defaults, skip=("template", *_method_flags()))
    _add_demos_flag(cmp)
    for name, (title, flags) in _method_flags().items():
        add_config_flags(cmp.add_argument_group(title), getattr(defaults, name), skip=_SHARED, **flags)
    _add_scale_flags(cmp)
    _add_compile_cache_flag(cmp)
    cmp.set_defaults(run=cmd_compare)

    plot = sub.add_parser("plot", help="PNG heatmaps (layers x heads) of head rankings, and the comparison chart")
    plot.add_argument("files", nargs="+", help="compare.json from `tvjax compare` (every task's rankings and the "
                                               "bar chart) or task-vector .safetensors files (soft weights)")
    plot.add_argument("--out", default="results/plots", help="directory for the PNG files")
    plot.set_defaults(run=cmd_plot)
    return parser


def _method_flags() -> dict:
    """`tvjax compare`'s flags for each method's settings: CompareConfig field -> (help group title,
    `add_config_flags` keywords), from the methods' records."""
    return {m.settings: m.flags for m in METHODS.values() if m.settings and m.flags}


_SHARED = ("seed", "shots", "sweep")  # method settings that `compare_config` takes from compare's own flags
_NOT_FIT_FLAGS = ("seed", "template", "fit", "function_vector", "reinforce")  # CompareConfig fields fit lacks


def compare_config(args):
    """The `CompareConfig` of `tvjax compare`'s parsed flags.

    The seed (and the shots, for the function vector) are shared by every method; without
    `--fv-layer` the function vector's layer is chosen by a sweep on the valid split.
    """
    from tvjax.compare import CompareConfig

    defaults = CompareConfig()
    shared = {"seed": args.seed, "shots": args.shots, "sweep": args.fv_layer is None}
    methods = {}
    for name, (_, flags) in _method_flags().items():
        config = config_from_flags(args, getattr(defaults, name), flags.get("prefix", ""))
        methods[name] = dataclasses.replace(config, **{k: v for k, v in shared.items() if hasattr(config, k)})
    from tvjax.data import Template

    return config_from_flags(args, dataclasses.replace(defaults, template=Template(demos=args.demos), **methods))


def _add_scale_flags(parser) -> None:
    """Flags for running on a mesh of devices, possibly across processes (TPU pods)."""
    parser.add_argument("--mesh", default=None,
                        help="device mesh, e.g. data=2,fsdp=2,tensor=2 (default: every device on data)")
    parser.add_argument("--distributed", action="store_true",
                        help="join a multi-process run detected by JAX (Cloud TPU pods, SLURM, Open MPI); "
                             "JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID describe one explicitly")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="params and activations")
    parser.add_argument("--remat", default=None, choices=REMAT_POLICIES, help="per-layer rematerialisation")
    parser.add_argument("--attention", default="einsum", choices=ATTENTION,
                        help="attention implementation: einsums, or jax.nn.dot_product_attention (cuDNN on GPUs)")
    parser.add_argument("--attention-chunk", default=1024, type=_chunk, metavar="QUERIES",
                        help="attend in blocks of this many queries on longer prompts, so memory grows linearly "
                             "with the prompt ('none': all at once; default 1024)")


def _add_demos_flag(parser) -> None:
    from tvjax.data.prompts import DEMOS

    parser.add_argument("--demos", default=DEMOS[0], choices=DEMOS,
                        help="how ICL prompts draw their demonstrations: 'distinct' (train pairs other than the "
                             "query, seeded once) or 'site' (the soft-injection paper's code replayed, digit answers "
                             "written as it writes them), for its ICL baseline on its tasks")


def _add_strength_flag(parser) -> None:
    parser.add_argument("--scale", type=checked(float, FINITE), default=1.0, metavar="S",
                        help="the intervention's strength: what it changes, times S (1: as made, 0: nothing; "
                             "tvjax.scaled)")


def _add_baselines_flag(parser) -> None:
    parser.add_argument("--baselines", default=",".join(BASELINES), type=_baselines, metavar="NAMES",
                        help=f"baselines scored beside the fitted methods: comma-separated, of "
                             f"{', '.join(BASELINES)}, or 'none' (default: all; the {METHODS['icl'].label} "
                             f"baseline runs the longest prompts)")


def _baselines(text: str) -> tuple[str, ...]:
    names = [n.strip() for n in text.split(",") if n.strip() and n.strip() != "none"]
    unknown = sorted(set(names) - set(BASELINES))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown baselines {unknown}: give some of {', '.join(BASELINES)}, or none")
    return tuple(m for m in BASELINES if m in names)


def _add_compile_cache_flag(parser) -> None:
    parser.add_argument("--compile-cache", default=os.environ.get("TVJAX_COMPILE_CACHE", "default"), metavar="DIR",
                        help="keep compiled XLA programs in DIR so later runs skip compiling (default: "
                             "$TVJAX_COMPILE_CACHE, else <tvjax cache>/xla; 'off' disables)")


def _load_model(args):
    """The model of `args`, on the mesh of `--mesh` (after joining a multi-process run)."""
    import jax

    from tvjax.convert import load
    from tvjax.sharding import initialize_distributed, make_mesh

    initialize_distributed(args.distributed)
    mesh = None if args.mesh is None and jax.device_count() == 1 else make_mesh(args.mesh)
    model = load(args.model, dtype=args.dtype, mesh=mesh)
    return model._replace(config=model.config.replace(remat=args.remat, attention=args.attention,
                                                      attention_chunk=args.attention_chunk))


def _chunk(text: str) -> int | None:
    if text.lower() == "none":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of queries or 'none'")
    return int(text)


def _template(args, info: dict | None = None):
    from tvjax.data import DEFAULT_TEMPLATE, Template

    demos = getattr(args, "demos", "distinct")
    if args.template is None:
        return Template((info or {}).get("template", DEFAULT_TEMPLATE), demos)
    return Template(_typed(args.template), demos)


def _typed(text: str) -> str:
    """Text as typed in a shell: \\n and \\t are a line break and a tab."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def _intervention_file(args):
    """The intervention file of `--intervention` (or None), read and checked before any model
    loads; without `--model`, the model becomes the one the file records."""
    from tvjax.taskvector import load_intervention

    tv = load_intervention(args.tv) if args.tv else None
    recorded = (tv.info if tv else {}).get("model")
    if args.model is None and recorded is not None:
        if recorded == "custom":
            raise ValueError(f"{args.tv} was fitted on a model passed in from Python, which it cannot name: "
                             f"give it with --model")
        print(f"model: {recorded} (recorded in {args.tv}; --model overrides)", file=sys.stderr)
        args.model = recorded
    return tv


def _model_for(args, tv):
    """The model of `args`, checked against the intervention file `tv` (or None)."""
    from tvjax.convert import DEFAULT_MODEL

    model = _load_model(args)
    if tv is not None:
        tv.check(model.config, args.model or DEFAULT_MODEL)
    return model


def cmd_tasks(args) -> None:
    from tvjax.data import builtin_names, load_task
    from tvjax.data.suites import SUITES, download

    if args.action == "download":
        suite = SUITES[args.suite]
        where = download(suite.name, args.source)
        print(f"{suite.name}: {len(suite.tasks())} tasks from {suite.repo} at {suite.commit[:12]} ({suite.license}), "
              f"{len(suite.files())} files checked, in {where}; use --task {suite.name}:TASK or --tasks {suite.name}")
        return
    print(f"{'task':<18} {'pairs':>6} {'train':>6} {'valid':>6} {'test':>6}")
    for name in builtin_names():
        task = load_task(name)
        print(f"{name:<18} {len(task):>6} {len(task.train):>6} {len(task.valid):>6} {len(task.test):>6}")
    for suite in SUITES.values():
        there = suite.directory().is_dir()
        print(f"suite {suite.name}: {suite.repo} at {suite.commit[:12]}, " +
              (f"{len(suite.tasks())} tasks in {suite.directory()}" if there else
               f"not downloaded (tvjax tasks download {suite.name})"))


def cmd_fit(args) -> None:
    import jax

    from tvjax.convert import DEFAULT_MODEL
    from tvjax.extractor import TaskVectorExtractor, fit_together
    from tvjax.fitting import FitConfig

    tasks = _tasks(args.task, args.seed, args.shots)  # everything checked before the model loads
    config = config_from_flags(args, FitConfig())
    methods = (*args.baselines, "task_vector")
    template, out = _template(args), check_output_dir(args.out, "--out")
    checkpoints = args.checkpoint_dir or (out / "checkpoints" / "+".join(t.name for t in tasks) if args.resume
                                          else None)
    if checkpoints is not None:
        _check_checkpoint_dir(Path(checkpoints), args.resume)
    start = time.perf_counter()
    model = _load_model(args)
    settings = dict(shots=args.shots, n_prompts=args.n_prompts, fit_config=config, template=template,
                    seed=args.seed, model_name=args.model or DEFAULT_MODEL)
    loaded = time.perf_counter() - start
    if len(tasks) == 1:
        tv = TaskVectorExtractor(model, tasks[0], **settings)
        tv.fit(checkpoints, resume=args.resume)
        fitted = [(tv, tv.evaluate(methods))]
    else:
        fitted = fit_together(model, tasks, methods=methods, checkpoint_dir=checkpoints, resume=args.resume,
                              **settings)
    if jax.process_index() != 0:  # every process of a multi-process run has the results; one writes them
        return
    for tv, scores in fitted:
        tv.timings = {"load": loaded, **tv.timings}
        _write_fit(tv, scores, config, out)


def _tasks(names: str, seed: int, shots: int) -> list:
    """The comma-separated tasks of `names`, each checked to make `shots`-shot prompts."""
    from tvjax.data import load_task
    from tvjax.data.suites import expand

    tasks = [load_task(path, seed) for path in expand(names)]
    if not tasks:
        raise ValueError(f"--task {names!r} names no task")
    for task in tasks:
        task.require(shots)
    return tasks


def _check_checkpoint_dir(directory: Path, resume: bool) -> None:
    """Refuse a checkpoint folder that cannot be written, or that holds checkpoints without --resume."""
    from tvjax.checkpoint import has_checkpoints

    check_output_dir(directory, "--checkpoint-dir")
    steps = [int(p.name) for d in (directory, *directory.glob("*/")) if has_checkpoints(d) for p in d.iterdir()
             if p.name.isdigit()]  # a split fit keeps each stage's in a folder of its own
    if steps and not resume:
        raise ValueError(f"--checkpoint-dir {directory} already holds checkpoints (latest step {max(steps)}): "
                         f"continue them with --resume, or choose another folder")


def _write_fit(tv, scores: dict, config, out: Path) -> None:
    """Save one task's vector and results JSON, and print its table."""
    from tvjax.report import markdown_table

    task = tv.task
    path = tv.save(out / f"{task.name}.safetensors", scores={m: s.as_dict() for m, s in scores.items()})
    results = {"model": tv.model_name, "task": task.name, "task_vector": str(path),
               "scores": {m: s.as_dict() for m, s in scores.items()}, "fit": dataclasses.asdict(config),
               "best_step": tv.result.best_step, "history": tv.result.history, "seconds": tv.timings}
    write_text(out / f"{task.name}.json", json.dumps(results, indent=2))
    print(markdown_table({task.name: {m: s.as_dict() for m, s in scores.items()}}, list(scores), mean=False))
    print(f"first-token / exact-match accuracy (%) on the test split, {scores['task_vector'].n} prompts"
          f"{_skipped(scores['task_vector'])}; best validation step {tv.result.best_step}")
    print("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in tv.timings.items()))
    print(f"saved {path} and {out / (task.name + '.json')}")


def cmd_eval(args) -> None:
    import jax

    from tvjax.convert import DEFAULT_MODEL
    from tvjax.evaluation import Scores, evaluate
    from tvjax.extractor import TaskVectorExtractor
    from tvjax.interventions import scaled
    from tvjax.report import markdown_table

    tv_file = _intervention_file(args)
    info = tv_file.info if tv_file else {}
    seed = info.get("seed", 0) if args.seed is None else args.seed
    if args.task is None and "task" not in info:
        raise ValueError("--task is needed" + (" (the task vector records none)" if args.tv else ""))
    task = _tasks(args.task or info["task"], seed, args.shots)[0]
    template, out = _template(args, info), check_output_dir(args.out, "--out")
    if info.get("task") not in (None, task.name):
        print(f"warning: the task vector was fitted on task {info['task']!r}, evaluating it on {task.name!r}",
              file=sys.stderr)
    model = _model_for(args, tv_file)
    tv = TaskVectorExtractor(model, task, shots=args.shots, template=template, seed=seed)
    scores = tv.evaluate(BASELINES, split=args.split, first_token_only=args.first_token_only)
    if tv_file is not None:  # scored under the method that made it (compare's files record it)
        method = info.get("method", "task_vector")
        scores[method] = evaluate(model, task, intervention=scaled(tv_file.intervention(), args.scale),
                                  split=args.split, seed=seed,
                                  template=tv.template, desc=method,
                                  first_token_only=args.first_token_only)
    methods = list(scores)
    if jax.process_index() != 0:
        return
    table = {m: s.as_dict() for m, s in scores.items()}
    print(markdown_table({task.name: table}, methods, mean=False))
    print(f"first-token / exact-match accuracy (%) on the {args.split} split (seed {seed}), "
          f"{scores['zero_shot'].n} prompts{_skipped(scores['zero_shot'])}")
    paths = out / f"{task.name}.eval.json", out / f"{task.name}.eval.csv"
    write_text(paths[0], json.dumps({"model": args.model or DEFAULT_MODEL, "task": task.name, "split": args.split,
                                     "seed": seed, "shots": args.shots, "task_vector": args.tv, "scale": args.scale,
                                     "scores": table},
                                    indent=2))
    fields = [f.name for f in dataclasses.fields(Scores)]  # None (not scored) as an empty cell
    write_text(paths[1], "\n".join(["method," + ",".join(fields)] + [
        ",".join([m, *("" if s[f] is None else str(s[f]) for f in fields)]) for m, s in table.items()]) + "\n")
    print(f"wrote {paths[0]} and {paths[1]}")


def _skipped(scores) -> str:
    return f" ({scores.skipped} skipped: answer does not tokenise)" if scores.skipped else ""


def cmd_generate(args) -> None:
    import jax

    from tvjax.generation import generate_text, template_stop
    from tvjax.interventions import scaled

    tv = _intervention_file(args)
    info = tv.info if tv else {}
    template = _template(args, info)
    stop = template_stop(template) if args.stop is None else [_typed(s) for s in args.stop]
    if "" in stop:
        raise ValueError("--stop '': an empty stop string would end every answer at once")
    model = _model_for(args, tv)
    if model.tokenizer is None:
        raise ValueError("this checkpoint has no tokenizer; copy its tokenizer files into the checkpoint directory")
    # Queries end like the fitting prompts did (e.g. with the ' ' token before digits).
    prompts = [_typed(args.prompt)] if args.prompt else [template.query(q)[0] + info.get("lead", "")
                                                         for q in args.query]
    texts = generate_text(model, prompts, args.max_new_tokens, stop=stop,
                          intervention=tv and scaled(tv.intervention(), args.scale), temperature=args.temperature,
                          top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    if jax.process_index() != 0:
        return
    for prompt, text in zip(prompts, texts):
        print(f"{prompt!r} -> {text!r}")


def cmd_compare(args) -> None:
    import jax

    from tvjax.compare import check_methods, compare, task_paths, write_report
    from tvjax.convert import DEFAULT_MODEL
    from tvjax.data import builtin_names, load_task
    from tvjax.report import markdown_table, shared_methods

    tasks = task_paths(args.tasks) if args.tasks else builtin_names()
    methods = check_methods([m for m in (METHODS if args.methods is None else [m.strip() for m in
                                                                          args.methods.split(",")])
                             if m not in BASELINES or m in args.baselines])
    config = compare_config(args)
    for spec in tasks:  # every task checked before the model loads
        load_task(spec, config.seed).require(config.shots)
    check_output_dir(args.out, "--out")
    results = compare(_load_model(args), tasks, args.out, config, methods, redo=args.redo,
                      model_name=args.model or DEFAULT_MODEL)
    if jax.process_index() != 0:
        return
    paths = write_report(results, args.out, model=args.model or DEFAULT_MODEL, config=dataclasses.asdict(config))
    print(markdown_table({n: r["scores"] for n, r in results.items()}, shared_methods(results)))
    print("first-token / exact-match accuracy (%) on the test split; wrote " + ", ".join(map(str, paths.values())))


def cmd_plot(args) -> None:
    from tvjax.methods import labels, rankings
    from tvjax.plot import comparison_chart, head_heatmap
    from tvjax.report import shared_methods
    from tvjax.taskvector import load_task_vector

    out, written = check_output_dir(args.out, "--out"), []
    inputs = {file: _compare_results(file) if file.suffix == ".json" else load_task_vector(file)
              for file in map(Path, args.files)}  # every input read before the first figure
    for file, read in inputs.items():
        if file.suffix == ".json":
            results = read
            for name, result in results.items():
                for ranking, values in result["rankings"].items():
                    written.append(head_heatmap(values, out / f"{name}_{ranking}.png", f"{name}: {ranking}",
                                                rankings()[ranking]))
            written.append(comparison_chart({n: r["scores"] for n, r in results.items()}, shared_methods(results),
                                            labels(), out / f"{file.stem}.png"))
        else:
            tv = read
            split = tv.theta_answer is not None  # where the task lives: the prompt's last token vs the answer
            written.append(head_heatmap(tv.weights(),
                                        out / f"{file.stem}_soft_weights.png",
                                        f"{tv.info.get('task', file.stem)}: soft_weights", rankings()["soft_weights"],
                                        ("last prompt token", "answer tokens") if split else ()))
    print("\n".join(map(str, written)))


def _compare_results(file: Path) -> dict:
    """The `results` of a compare.json, each with its `rankings` and `scores`."""
    if not file.is_file():
        raise ValueError(f"no file {file}")
    results = json.loads(file.read_text()).get("results")
    if not isinstance(results, dict) or any({"rankings", "scores"} - set(r) for r in results.values()):
        raise ValueError(f"{file} is not a compare.json of `tvjax compare` (its results with rankings and scores)")
    return results


if __name__ == "__main__":
    sys.exit(main())
