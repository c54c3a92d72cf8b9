"""The import map, checked on the source: imports point down the map, no two modules import
each other (directly or round a longer loop), and an import inside a function is a listed,
deliberate exception (a heavy or optional dependency kept lazy), never a way round a cycle.

Nothing is imported here: every file under ``src/iprime`` is parsed with :mod:`ast`. The map
(:data:`LAYERS`) is the table "Layout and import rules" of CONTRIBUTING.md, as data.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from functools import cache
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# ---------------------------------------------------------------------------------------------
# the map: what each part of iprime may import of iprime, besides itself and BASE
#
# A key is a package or a module; a module belongs to the longest key it is (or is inside of).
# An entry allows that package or module and everything inside it. ANYTHING is the top.
ANYTHING = ("iprime",)
DISPLAY = ("iprime.tables", "iprime.progress")  # how results and progress are printed
BASE = ("iprime", "iprime._lazy")  # the root (``__version__``) and the lazy-export helper

LAYERS: dict[str, tuple[str, ...]] = {
    # the bottom: nothing of iprime
    "iprime.algo": (),
    "iprime.optim": (),
    "iprime.models": (),
    "iprime.tables": (),
    "iprime.progress": (),
    "iprime.plots": (),
    "iprime.quiet": (),
    "iprime.numerics": (),  # portable float kernels: set before torch loads, so it imports none of it
    # data, and what reads or scores it
    "iprime.data": ("iprime.models",),
    "iprime.verifiers": ("iprime.data",),
    "iprime.rollout": ("iprime.models", "iprime.data"),
    "iprime.prm": ("iprime.algo", "iprime.optim", "iprime.models", "iprime.data", *DISPLAY),
    "iprime.prm.metadata": (),  # the config reads its defaults: it stays light
    "iprime.config": ("iprime.algo", "iprime.prm.metadata"),
    "iprime.eval": ("iprime.algo", "iprime.models", "iprime.data", "iprime.verifiers", "iprime.rollout", "iprime.prm")
    + DISPLAY,
    "iprime.eval.benchmarks": ("iprime.data", "iprime.verifiers"),  # iprime.train may import it
    "iprime.eval.loop": ("iprime.data", "iprime.verifiers", "iprime.rollout"),  # the one evaluation loop; train runs it
    # everything above; of evaluation only the shipped benchmarks and the evaluation loop
    "iprime.train": ("iprime.algo", "iprime.optim", "iprime.models", "iprime.data", "iprime.verifiers")
    + ("iprime.rollout", "iprime.prm", "iprime.config", "iprime.eval.benchmarks", "iprime.eval.loop")
    + DISPLAY,
    # the top: commands, presets, the demo
    "iprime.presets": ANYTHING,
    "iprime.quickstart": ANYTHING,
    "iprime.starter": ANYTHING,  # `iprime model tiny`, `iprime data example`
    "iprime.config_show": ANYTHING,
    "iprime.data_check": ANYTHING,
    "iprime.preflight": ANYTHING,  # the pre-flight check: config, machine, data check, sandbox
    "iprime.cli": ANYTHING,
    "iprime.clean_stop": ANYTHING,  # a long command's failures as messages and exit statuses
    "iprime.__main__": ANYTHING,
}

# ---------------------------------------------------------------------------------------------
# imports inside functions: (module, what it imports) -> why it is imported there. The name
# imported covers its submodules ("torch.distributed" covers "torch.distributed.fsdp").
LIGHT_CLI = "keeps torch / transformers out of `import iprime.cli` (test_the_command_line_loads_without_torch)"
OPTIONAL = "an optional extra; its ImportError says what to install"
ONLY_IF_LOADED = "only when that library is already loaded (sys.modules): importing it here would load it"
VERIFIERS = "iprime.verifiers costs ~0.1 s (the sandbox, process pools), a sixth of `iprime --help`"
POSIX_ONLY = "POSIX only (no such module on Windows); this module is imported on every platform"
TORCH_DISTRIBUTED = (
    "torch.distributed's checkpoint / FSDP modules take ~1 s each to import, are needed only under torchrun "
    "or for DCP checkpoints, and are absent from torch builds without distributed support"
)
LAZY_IMPORTS: dict[tuple[str, str], str] = {
    # the command line and its sub-commands: torch loads when a command runs, not for --help
    ("iprime.cli", "torch"): LIGHT_CLI,
    ("iprime.cli", "iprime.algo"): LIGHT_CLI,
    ("iprime.cli", "iprime.config"): LIGHT_CLI,  # the estimator registry (iprime.algo)
    ("iprime.cli", "iprime.models"): LIGHT_CLI,
    ("iprime.cli", "iprime.quickstart"): LIGHT_CLI,
    ("iprime.cli", "iprime.presets"): LIGHT_CLI,
    ("iprime.cli", "iprime.train.prime"): LIGHT_CLI,
    ("iprime.cli", "iprime.train.progress"): LIGHT_CLI,  # the empty-steps summary at the end of a run
    ("iprime.cli", "iprime.clean_stop"): LIGHT_CLI,
    ("iprime.cli", "iprime.train.signals"): LIGHT_CLI,
    ("iprime.cli", "iprime.train.sft"): LIGHT_CLI,
    ("iprime.cli", "iprime.train.distributed"): LIGHT_CLI,  # `iprime sft` joins torchrun's process group
    ("iprime.cli", "iprime.train.identity"): LIGHT_CLI,  # it imports iprime.config (the estimator registry)
    ("iprime.cli", "iprime.preflight"): LIGHT_CLI,  # it imports torch and iprime.config
    ("iprime.config_show", "iprime.config"): LIGHT_CLI,
    ("iprime.starter", "iprime.presets"): LIGHT_CLI,
    ("iprime.starter", "iprime.models"): LIGHT_CLI,
    ("iprime.starter", "iprime.train.sft"): LIGHT_CLI,
    ("iprime.starter", "pyarrow"): "parquet writing only; " + LIGHT_CLI,
    ("iprime.config_show", "iprime.preflight"): LIGHT_CLI,  # the memory estimate block
    ("iprime.data_check", "iprime.models"): LIGHT_CLI + "; the tokenizer, with --tokenizer only",
    ("iprime.data_check", "iprime.verifiers"): VERIFIERS,
    ("iprime.eval.commands", "iprime.eval.runner"): LIGHT_CLI,
    ("iprime.eval.commands", "iprime.prm.scoring"): LIGHT_CLI,
    ("iprime.eval.commands", "iprime.rollout.vllm"): LIGHT_CLI + "; its error when vLLM is missing",
    ("iprime.eval.commands", "iprime.eval.rerank"): VERIFIERS,  # rerank imports iprime.verifiers
    ("iprime.eval.commands", "iprime.verifiers"): VERIFIERS,
    ("iprime.train.export", "iprime.train.checkpoint"): LIGHT_CLI,
    ("iprime.train.export", "iprime.config"): LIGHT_CLI,  # the estimator registry (iprime.algo)
    ("iprime.train.export", "iprime.models"): LIGHT_CLI,
    ("iprime.train.export", "iprime.train.memory"): LIGHT_CLI,
    ("iprime.prm.commands", "iprime.models"): LIGHT_CLI,
    ("iprime.prm.commands", "iprime.prm.offline"): LIGHT_CLI,
    ("iprime.prm.commands", "iprime.prm.scoring"): LIGHT_CLI,
    # heavy or optional libraries, loaded by the one function that needs them
    ("iprime.data.sources", "pyarrow"): "parquet files only; iprime.data.sources is on the CLI's import path",
    ("iprime.data.sources", "datasets"): "hf: sources only; not a dependency of iprime",
    ("iprime.models.loading", "peft"): OPTIONAL + " (iprime[lora])",
    ("iprime.train.memory", "peft"): OPTIONAL + " (iprime[lora])",
    ("iprime.rollout.vllm", "vllm"): OPTIONAL + " (iprime[vllm], GPU rollouts)",
    ("iprime.verifiers.gym", "reasoning_gym"): OPTIONAL + " (iprime[gym])",
    ("iprime.train.logging", "wandb"): "train.wandb only; not a dependency of iprime",
    ("iprime.train.logging", "torch.utils.tensorboard"): "train.tensorboard only; imports tensorboard (~1 s)",
    ("iprime.train.export", "huggingface_hub"): "--push-to-hub only; train.export is on the CLI's import path",
    ("iprime.plots", "matplotlib"): "~1 s, for drawing only; " + LIGHT_CLI,
    ("iprime.verifiers.math", "math_verify"): "math_verify imports sympy (~1 s); verifier workers load it",
    ("iprime.verifiers.math", "sympy"): "~1 s; for the rare tiny-number comparison only",
    ("iprime.verifiers._pool", "resource"): POSIX_ONLY + "; needed only for a worker memory limit",
    ("iprime.verifiers.bounded", "resource"): POSIX_ONLY + "; in the bounded helper's task children only",
    # the runner also imports it once before the sandbox is set up (main), while it can still read the stdlib
    ("iprime.verifiers.sandbox.runner", "resource"): POSIX_ONLY + " (the host reads plain data with it)",
    ("iprime.verifiers.sandbox.runner", "fcntl"): POSIX_ONLY + " (the host reads plain data with it)",
    ("iprime.train.run_lock", "fcntl"): POSIX_ONLY + "; the run folder's lock, taken by `iprime train` and `sft`",
    ("iprime.quiet", "transformers"): ONLY_IF_LOADED,
    ("iprime.verifiers.registry", "iprime.verifiers.math"): "sympy (~1 s): loaded by name, when used",
    ("iprime.verifiers.registry", "iprime.verifiers.code"): "the code sandbox: loaded by name, when used",
    ("iprime.verifiers.registry", "iprime.verifiers.gym"): OPTIONAL + " (iprime[gym])",
    ("iprime.verifiers.registry", "iprime.data.boxed"): "loaded by name, when used, like every registry entry",
    ("iprime.numerics", "torch"): "the kernel settings must be made before torch loads (use_portable_kernels)",
    ("iprime.quiet", "huggingface_hub"): ONLY_IF_LOADED,
    ("iprime.quiet", "datasets"): ONLY_IF_LOADED,
    ("iprime.train.checkpoint_dcp", "torch.distributed.checkpoint"): TORCH_DISTRIBUTED,
    ("iprime.train.distributed", "torch.distributed.fsdp"): TORCH_DISTRIBUTED,
    ("iprime.preflight", "iprime.train.distributed"): (
        "its check_config checks nothing in one process, and importing it loads torch.distributed and "
        "transformers (~3 s): the pre-flight imports it only for a world size above 1"
    ),
}

# cycles being fixed by another worker (issue 21): each entry goes once its cycle is gone (the
# test says so); until then the test passes with them
KNOWN_CYCLES: dict[frozenset[str], str] = {}


# ---------------------------------------------------------------------------------------------
# reading the source
@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    line: int
    target: str  # the module imported (a submodule when ``from package import submodule``)
    in_function: bool
    type_only: bool  # under ``if TYPE_CHECKING:``: never runs

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.target}"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / "iprime").rglob("*.py"))}


def _resolve(base: str, name: str) -> str:
    """``from base import name``: the submodule ``base.name`` when there is one, else ``base``."""
    return f"{base}.{name}" if f"{base}.{name}" in modules() else base


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(node: ast.AST, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: from the package of ``module``
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join(package + ([base] if base else []))
        return [_resolve(base, alias.name) for alias in node.names]
    # import_module("iprime.x"): an import all the same
    if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "import_module":
        if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            return [node.args[0].value]
    return []


@cache
def imports() -> list[Import]:
    found: list[Import] = []
    for module, path in modules().items():
        is_package = path.name == "__init__.py"

        def visit(node: ast.AST, in_function: bool, type_only: bool) -> None:
            for child in ast.iter_child_nodes(node):
                for target in _targets(child, module, is_package):
                    found.append(Import(module, child.lineno, target, in_function, type_only))
                visit(
                    child,
                    in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)),
                    type_only or (isinstance(child, ast.If) and _is_type_checking(child)),
                )

        visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), False, False)
    return list(dict.fromkeys(found))  # ``from x import a, b``: one import of x


def _inside(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_of(module: str) -> str | None:
    keys = [k for k in LAYERS if _inside(module, k)]
    return max(keys, key=len) if keys else None


def may_import(module: str, target: str) -> bool:
    layer = layer_of(module)
    assert layer is not None
    return target in BASE or _inside(target, layer) or any(_inside(target, p) for p in LAYERS[layer])


# ---------------------------------------------------------------------------------------------
# the checks
def upward_imports() -> list[str]:
    problems = []
    for imp in imports():
        if imp.module not in BASE and _inside(imp.target, "iprime") and not may_import(imp.module, imp.target):
            layer = layer_of(imp.module)
            allowed = f"only {', '.join(LAYERS[layer])}" if LAYERS[layer] else "nothing of iprime"
            problems.append(f"{imp}: {layer} may import {allowed}")
    return problems


def import_graph() -> dict[str, dict[str, int]]:
    """``{module: {imported module: line}}`` of iprime's own modules, every import that runs (at
    module level or inside a function: a function's import closes a loop just the same)."""
    graph: dict[str, dict[str, int]] = defaultdict(dict)
    for imp in imports():
        if not imp.type_only and imp.target in modules() and imp.target != imp.module:
            graph[imp.module].setdefault(imp.target, imp.line)
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def cycle_path(graph: dict[str, dict[str, int]], component: list[str]) -> str:
    """One loop through ``component``'s first module, each step with the line that imports:
    ``a:12 -> b:40 -> a``."""
    start, members = component[0], set(component)
    parent: dict[str, str] = {}
    todo = [start]
    while todo:  # breadth first, so the loop shown is a shortest one
        v = todo.pop(0)
        for w in graph[v]:
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                path.reverse()
                return " -> ".join(f"{a}:{graph[a][b]}" for a, b in zip(path, path[1:] + [start])) + f" -> {start}"
            if w in members and w not in parent and w != start:
                parent[w] = v
                todo.append(w)
    raise AssertionError(f"no loop through {start}")


def function_imports() -> tuple[list[str], set[tuple[str, str]]]:
    """In-function imports that no LAZY_IMPORTS entry allows, and the entries that allowed one."""
    used: set[tuple[str, str]] = set()
    unlisted = []
    for imp in imports():
        if not imp.in_function:
            continue
        keys = [(m, t) for m, t in LAZY_IMPORTS if m == imp.module and _inside(imp.target, t)]
        used.update(keys)
        if not keys:
            unlisted.append(str(imp))
    return unlisted, used


# ---------------------------------------------------------------------------------------------
# the tests
def test_every_module_is_on_the_map():
    assert [m for m in modules() if m not in BASE and layer_of(m) is None] == []


def test_the_map_points_one_way():
    """No two parts of the map may import each other (the top, which may import anything, aside)."""
    below = {
        key: {other: 0 for other in LAYERS if other != key and any(_inside(other, p) for p in allowed)}
        for key, allowed in LAYERS.items()
        if allowed != ANYTHING
    }
    assert strongly_connected(below) == []


def test_imports_point_down_the_map():
    problems = upward_imports()
    assert not problems, "imports up the map (see LAYERS in tests/test_layering.py):\n" + "\n".join(problems)


def test_no_import_cycles():
    graph = import_graph()
    components = strongly_connected(graph)
    new = [cycle_path(graph, c) for c in components if frozenset(c) not in KNOWN_CYCLES]
    gone = [sorted(c) for c in KNOWN_CYCLES if sorted(c) not in components]
    assert not new, "modules that import each other (module:line -> ...):\n" + "\n".join(new)
    assert not gone, f"no longer a cycle, remove it from KNOWN_CYCLES: {gone}"


def test_imports_inside_functions_are_listed_with_a_reason():
    unlisted, used = function_imports()
    assert not unlisted, (
        "imports inside functions: move them to the top of the module, or, for a heavy or optional "
        "dependency kept lazy on purpose, add them to LAZY_IMPORTS with the reason:\n" + "\n".join(unlisted)
    )
    stale = sorted(set(LAZY_IMPORTS) - used)
    assert not stale, f"listed, but no such import inside a function any more: remove {stale}"


def test_the_checks_see_a_planted_upward_import_and_cycle():
    """The checks themselves, on made-up imports: a cycle is found and shown as a path, an
    import up the map is refused and one down allowed."""
    graph = {"a": {"b": 3}, "b": {"c": 7}, "c": {"a": 9}, "d": {"a": 1}}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert cycle_path(graph, ["a", "b", "c"]) == "a:3 -> b:7 -> c:9 -> a"
    assert not may_import("iprime.algo.losses", "iprime.train.prime")
    assert not may_import("iprime.prm.commands", "iprime.train.progress")
    assert may_import("iprime.train.prime", "iprime.algo.losses") and may_import("iprime.cli", "iprime.train")
    assert may_import("iprime.config", "iprime.prm.metadata") and not may_import("iprime.config", "iprime.prm.scoring")
