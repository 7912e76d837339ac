"""The package's layers, read from the source with ``ast``: each imports only the layers
before it, no module imports itself in a circle, and nothing outside the command line
imports inside a function (except the optional or costly packages listed below) or parses
arguments."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "capsnet"

# Each layer may import its own modules and those of the layers of a lower rank; models
# and data share a rank and know nothing of each other.
RANKS = {"base": 0, "nn": 1, "models": 2, "data": 2, "training": 3, "tools": 4, "cli": 5}
BASE = {  # the top level: infrastructure every layer may use
    "capsnet",
    "capsnet._deprecated",
    "capsnet.allocator",
    "capsnet.errors",
    "capsnet.files",
    "capsnet.names",
    "capsnet.runtime",
    "capsnet.targets",
    "capsnet.typecheck",
}

# Imports inside functions that stay there, outside capsnet.cli (whose lazy imports keep
# `capsnet --help` from loading PyTorch): module → the packages it imports late, and why.
LATE = {
    "capsnet.data.affnist": {"scipy.io", "scipy.io.matlab"},  # optional extra [affnist]
    "capsnet.data.svhn": {"scipy.io"},  # optional extra [svhn]
    "capsnet.tools.export": {"onnx", "onnxruntime"},  # optional extra [onnx]
    "capsnet.training.tensorboard": {"tensorboard", "torch.utils.tensorboard"},  # [tensorboard]
    # PyTorch's extension builder (it loads setuptools) only when a kernel is built or loaded
    "capsnet.nn.native": {"torch.utils.cpp_extension"},
    # matplotlib only when a figure is drawn (the trainer imports the figures' module)
    "capsnet.models.figures": {"matplotlib", "matplotlib.pyplot"},
}


def _name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str:
    if module in BASE:
        return "base"
    if module == "capsnet.__main__":
        return "cli"
    return module.split(".")[1]


def _imports(module: str) -> list[tuple[str, bool]]:
    """(imported module, whether the import is inside a function) of every import
    statement; ``from p import m`` counts as importing ``p.m`` where that is a module."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, inside: bool) -> None:
        for child in ast.iter_child_nodes(node):
            late = inside or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((a.name, inside) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*up, *([base] if base else [])])
                for a in child.names:
                    sub = f"{base}.{a.name}"
                    found.append((sub if sub in MODULES else base, inside))
            visit(child, late)

    visit(ast.parse(path.read_text()), False)
    return found


IMPORTS = {m: _imports(m) for m in MODULES}


def test_every_module_is_in_a_layer():
    assert {layer(m) for m in MODULES} == set(RANKS)
    stray = [m for m in MODULES if m.count(".") == 1 and m not in BASE | {"capsnet.__main__"}]
    assert all(p.is_dir() for p in (PACKAGE / s.split(".")[1] for s in stray)), stray


def test_every_package_is_a_regular_package():
    # setuptools' find_packages (pyproject) ships only directories with an __init__.py
    dirs = {p.parent for p in PACKAGE.rglob("*.py")}
    assert not sorted(str(d) for d in dirs if not (d / "__init__.py").is_file())


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_only_its_own_layer_and_those_below(module):
    mine = layer(module)
    wrong = sorted(
        f"{target} ({layer(target)})"
        for target, _ in IMPORTS[module]
        if target in MODULES and layer(target) != mine and RANKS[layer(target)] >= RANKS[mine]
    )
    assert not wrong, f"{module} ({mine}) imports {', '.join(wrong)}"


def test_no_import_cycle():
    graph = {m: {t for t, _ in IMPORTS[m] if t in MODULES and t != m} for m in MODULES}
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def walk(m: str) -> None:
        state[m] = 1
        path.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycle = path[path.index(t) :]
                pytest.fail("import cycle: " + " → ".join([*cycle, t]))
            if t not in state:
                walk(t)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer(m) != "cli"))
def test_no_import_inside_a_function_outside_the_command_line(module):
    late = sorted({t for t, inside in IMPORTS[module] if inside} - LATE.get(module, set()))
    assert not late, f"{module} imports {', '.join(late)} inside a function"


def test_the_late_imports_listed_are_still_there():
    for module, names in LATE.items():
        assert names <= {t for t, inside in IMPORTS[module] if inside}, module


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer(m) != "cli"))
def test_only_the_command_line_parses_arguments(module):
    assert "argparse" not in {t for t, _ in IMPORTS[module]}


def test_every_public_name_of_the_package_resolves():
    import capsnet

    assert all(getattr(capsnet, name) is not None for name in capsnet.__all__)
