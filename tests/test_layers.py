"""The package's layering, read from its imports: no module imports one above it, and no method
imports another method (they share the engine instead)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tvjax"

# Bottom to top. A module may import its own layer and the ones below it.
LAYERS = [
    {"version", "vocabulary", "fields", "files", "config", "batching", "checkpoint", "methods", "data", "sharding",
     "taskvector"},
    {"attention", "rope", "interventions", "model", "convert", "compile_cache"},
    {"rows", "train", "extract", "generation", "evaluation", "scoring"},  # the engine
    {"fitting", "reinforce", "function_vectors", "patching"},  # the methods
    {"extractor", "compare", "experiments", "report", "plot", "flags", "cli", "torch_port", "llamacpp", "__init__"},
]
METHODS = LAYERS[3]


def _imports(path: Path) -> set[str]:
    """The top-level tvjax modules `path` imports (`tvjax.convert.gguf` -> `convert`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        found |= {n.split(".")[1] for n in names if n.startswith("tvjax.")}
        if isinstance(node, ast.ImportFrom) and node.module == "tvjax":
            found.add("__init__")
    return found


def _module(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def test_no_module_imports_one_above_it_and_no_method_imports_another():
    layer = {name: i for i, names in enumerate(LAYERS) for name in names}
    modules = {_module(p) for p in PACKAGE.rglob("*.py")}
    assert modules <= set(layer), f"place these modules in a layer: {sorted(modules - set(layer))}"
    for path in PACKAGE.rglob("*.py"):
        me = _module(path)
        for other in _imports(path) - {me}:
            assert layer[other] <= layer[me], f"{path.relative_to(PACKAGE)} imports {other}, a layer above it"
            assert not (me in METHODS and other in METHODS), f"method {me} imports method {other}"
