"""The layers stay visible: the shared core (slmops/) imports none of the sides, the agent imports neither the
control plane nor training, nothing below the command line imports it, and no module imports a private name
(`_name`) from another package. Checked on the source (every import, lazy ones included) and at run time."""
import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("slmops", "control_plane", "edge_agent", "training", "cli")
# what each package may not import (the command line is above everything; the shared core below everything)
FORBIDDEN = {"slmops": {"control_plane", "edge_agent", "training", "cli"},
             "edge_agent": {"control_plane", "training", "cli"},
             "control_plane": {"cli"}, "training": {"cli", "edge_agent"}}


def modules():
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if "v1" not in path.relative_to(ROOT).parts:  # generated gRPC code
                yield pkg, path, ast.parse(path.read_text(), str(path))


def imports(tree):
    """(imported module, (name, bound as) taken from it, line) for every import statement, lazy ones too."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, (), node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, tuple((a.name, a.asname or a.name) for a in node.names), node.lineno


def test_no_package_imports_a_layer_it_must_not():
    bad = [f"{path.relative_to(ROOT)}:{line} imports {mod}" for pkg, path, tree in modules()
           for mod, _, line in imports(tree) if mod.split(".")[0] in FORBIDDEN.get(pkg, ())]
    assert not bad, "\n".join(bad)


def test_no_private_name_is_imported_or_used_across_packages():
    bad = []
    for pkg, path, tree in modules():
        foreign_modules = set()
        for mod, names, line in imports(tree):
            top = mod.split(".")[0]
            if top in PACKAGES and top != pkg:
                bad += [f"{path.relative_to(ROOT)}:{line} imports {mod}.{n}" for n, _ in names
                        if n.startswith("_") and not n.startswith("__")]
                foreign_modules.update(bound for _, bound in names)  # `from pkg import module [as m]`
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in foreign_modules and node.attr.startswith("_") \
                    and not node.attr.startswith("__"):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not bad, "\n".join(bad)


def test_importing_the_whole_shared_core_loads_no_side():
    code = ("import importlib, pkgutil, sys, slmops\n"
            "for m in pkgutil.walk_packages(slmops.__path__, 'slmops.'):\n"
            "    importlib.import_module(m.name)\n"
            "print(','.join(sorted({n.split('.')[0] for n in sys.modules} & "
            "{'control_plane', 'edge_agent', 'training', 'cli', 'torch'})))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "", f"slmops pulled in: {out.stdout.strip()}"
