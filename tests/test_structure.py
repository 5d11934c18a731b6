"""The package's layers: no import cycles, and each layer imports only the layers below it."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "moe_rl")


def _module_name(path: str) -> str:
    name = os.path.relpath(path, ROOT)[: -len(".py")].replace(os.sep, ".")
    return name.removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """module -> the moe_rl modules it imports at its top level (function-local imports of
    optional dependencies and TYPE_CHECKING blocks left out)."""
    graph: dict[str, set[str]] = {}
    for folder, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                deps = set()
                for node in ast.parse(open(path).read()).body:
                    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                        "moe_rl"
                    ):
                        deps.add(node.module)
                        deps.update(f"{node.module}.{a.name}" for a in node.names)
                    elif isinstance(node, ast.Import):
                        deps.update(a.name for a in node.names if a.name.startswith("moe_rl"))
                graph[_module_name(path)] = deps
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def test_no_import_cycles():
    graph = import_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(module, stack):
        state[module] = 1
        stack.append(module)
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep) :] + [dep]))
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles, cycles


def test_layers_import_only_downwards():
    """The model and the data know nothing of training, plots or sharding specs; the mesh
    vocabulary, the verifiers and the metrics file know nothing of the model or the tasks."""
    graph = import_graph()
    below = {
        "moe_rl.models": ("moe_rl.train", "moe_rl.sharding", "moe_rl.plots", "moe_rl.rewards"),
        "moe_rl.data": ("moe_rl.train", "moe_rl.models", "moe_rl.plots", "moe_rl.rewards"),
        "moe_rl.mesh": ("moe_rl.models", "moe_rl.train", "moe_rl.sharding"),
        "moe_rl.verify": ("moe_rl.data", "moe_rl.rewards", "moe_rl.models"),
        "moe_rl.metrics": ("moe_rl.train", "moe_rl.plots", "moe_rl.models"),
        "moe_rl.plots": ("moe_rl.train",),
    }
    wrong = [
        f"{m} imports {d}"
        for m, deps in graph.items()
        for layer, forbidden in below.items()
        if m == layer or m.startswith(layer + ".")
        for d in deps
        if any(d == f or d.startswith(f + ".") for f in forbidden)
    ]
    assert not wrong, wrong


def test_only_main_and_the_recipes_import_the_recipes():
    """The recipes compose the library; nothing in the library runs a recipe."""
    graph = import_graph()
    wrong = [
        f"{m} imports {d}"
        for m, deps in graph.items()
        if not (m == "moe_rl.main" or m.startswith("moe_rl.recipes"))
        for d in deps
        if d.startswith("moe_rl.recipes")
    ]
    assert not wrong, wrong


def test_the_readme_architecture_names_every_module():
    """The README's architecture tree stays the package's: every module is in it."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    tree = readme.split("## Architecture", 1)[1].split("```", 2)[1]
    listed = set(tree.split())
    missing = [
        os.path.relpath(os.path.join(folder, f), PACKAGE)
        for folder, _, files in os.walk(PACKAGE)
        for f in files
        if f.endswith(".py") and f != "__init__.py" and f not in listed and f"{f}," not in listed
    ]
    assert not missing, f"README.md's architecture tree misses {sorted(missing)}"
