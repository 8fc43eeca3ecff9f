"""The edge agent must never import torch, transformers or peft."""
import subprocess
import sys

CODE = """
import sys, pkgutil, importlib, edge_agent
for m in pkgutil.iter_modules(edge_agent.__path__):
    importlib.import_module('edge_agent.' + m.name)
import cli.main
heavy = sorted(n for n in ('torch', 'transformers', 'peft') if n in sys.modules)
print(','.join(heavy))
"""


def test_edge_agent_imports_no_training_stack():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"edge_agent pulled in: {out.stdout.strip()}"
