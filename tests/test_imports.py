"""Package layout: no import cycles between fastsarnn's modules (lazy imports included), and
every module imports on its own in a fresh interpreter."""

import ast
import os
import subprocess
import sys

import pytest

import fastsarnn

PKG_DIR = os.path.dirname(fastsarnn.__file__)


def package_modules():
    """Module name -> file, for every .py file of the installed package."""
    out = {}
    for root, _, files in os.walk(PKG_DIR):
        for f in files:
            if not f.endswith(".py") or f in ("_build_c.py", "__main__.py"):  # not imported
                continue
            rel = os.path.relpath(os.path.join(root, f), os.path.dirname(PKG_DIR))
            name = rel[:-3].replace(os.sep, ".")
            out[name[: -len(".__init__")] if name.endswith(".__init__") else name] = \
                os.path.join(root, f)
    return out


def imports_of(name, path, modules):
    """fastsarnn modules that ``name`` imports anywhere in its code (module level or inside
    functions: a lazy import is still a dependency)."""
    is_pkg = path.endswith("__init__.py")
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    deps = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = base[: len(base) - node.level + 1]
                mod = ".".join(pkg + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            if t in modules and t != name:
                deps.add(t)
    return deps


def find_cycle(graph):
    state = {}

    def visit(n, path):
        state[n] = "active"
        for d in sorted(graph[n]):
            if state.get(d) == "active":
                return path[path.index(d):] + [d] if d in path else path + [d]
            if d not in state:
                cyc = visit(d, path + [d])
                if cyc:
                    return cyc
        state[n] = "done"
        return None

    for n in sorted(graph):
        if n not in state:
            cyc = visit(n, [n])
            if cyc:
                return cyc
    return None


def test_no_import_cycles_between_modules():
    modules = package_modules()
    graph = {n: imports_of(n, p, modules) for n, p in modules.items()}
    # Edges from a module into its own enclosing packages (``from . import __version__``,
    # ``from . import peers``) name the package object, imported before the module anyway:
    # they are not cycles.
    graph = {n: {d for d in deps if not n.startswith(d + ".")} for n, deps in graph.items()}
    assert "fastsarnn.bench.suite" in graph and "fastsarnn.torch" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    # the dependencies the layout promises, one way only
    assert "fastsarnn.model" in graph["fastsarnn.torch"]
    assert "fastsarnn.torch" not in graph["fastsarnn.model"]
    assert "fastsarnn.bench" in graph["fastsarnn.cli"] or \
        "fastsarnn.bench.suite" in graph["fastsarnn.cli"]
    assert not any(d.startswith("fastsarnn.cli") for d in graph["fastsarnn.bench.suite"])


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_runtime_package_ships_no_benchmark_code():
    assert not os.path.exists(os.path.join(PKG_DIR, "peers.py"))
    assert not os.path.exists(os.path.join(PKG_DIR, "bench.py"))


@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_every_module_imports_in_a_fresh_interpreter(tmp_path, order):
    names = sorted(package_modules())
    if order == "reverse":
        names = names[::-1]
    optional = {"fastsarnn.torch": "torch", "fastsarnn.dask": "dask"}
    code = ("import importlib, importlib.util, sys\n"
            f"for name, dep in {[(n, optional.get(n)) for n in names]!r}:\n"
            "    if dep and importlib.util.find_spec(dep) is None:\n"
            "        continue\n"
            "    for m in [m for m in sys.modules if m == 'fastsarnn' or "
            "m.startswith('fastsarnn.')]:\n"
            "        del sys.modules[m]\n"
            "    importlib.import_module(name)\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=str(tmp_path), timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
