"""Every command docs/BENCHMARKS.md gives is one that runs as written: each `.venv/bin/python bench/X.py ARGS`
names a script that exists and whose argument parser takes ARGS (parsed for real, then stopped before the bench
does its minutes of work), and each `slmops ...` / `python -m training.cli ...` line is accepted by its CLI (its
options checked by click, with --help so nothing runs). The figures themselves are never asserted; installing
packages (`pip install`) is not run."""
from __future__ import annotations

import json
import pathlib
import re
import shlex
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "BENCHMARKS.md"

# Runs each bench script with its documented arguments; argparse parses them (an error exits 2, naming the
# flag) and then this stops the script, so nothing is built or measured.
HARNESS = r"""
import argparse, json, runpy, sys
sys.path[:0] = [sys.argv[2], sys.argv[2] + "/bench"]

class Parsed(Exception):
    pass

parse = argparse.ArgumentParser.parse_args
def parse_only(self, args=None, namespace=None):
    parse(self, args, namespace)
    raise Parsed
argparse.ArgumentParser.parse_args = parse_only
out = []
for script, args in json.loads(sys.argv[1]):
    sys.argv = [script, *args]
    try:
        runpy.run_path(script, run_name="__main__")
        out.append([script, args, "returned without parsing its arguments"])
    except Parsed:
        out.append([script, args, "ok"])
    except SystemExit as e:
        out.append([script, args, f"exit {e.code}"])
print("RESULTS " + json.dumps(out))
"""


def documented_commands() -> list[list[str]]:
    text = DOC.read_text()
    cmds = []
    for block in re.findall(r"^[ \t]*```bash\n(.*?)^[ \t]*```", text, flags=re.S | re.M):   # list items too
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                cmds.append(shlex.split(line, comments=True))
    return [c for c in cmds if c]


def test_every_benchmarks_command_parses_as_written():
    benches, clis = [], []
    for argv in documented_commands():
        while argv and ("=" in argv[0] or argv[0] in ("/usr/bin/time", "-v")):   # VAR=... and time -v prefixes
            argv = argv[1:]
        if argv[:1] == [".venv/bin/pip"]:
            continue
        if argv[:1] == [".venv/bin/python"] and argv[1].startswith("bench/"):
            assert (ROOT / argv[1]).is_file(), f"docs/BENCHMARKS.md runs {argv[1]}, which does not exist"
            benches.append([argv[1], argv[2:]])
        elif argv[:1] == [".venv/bin/slmops"]:
            clis.append([str(ROOT / ".venv/bin/slmops"), *argv[1:]])
        elif argv[:3] == [".venv/bin/python", "-m", "training.cli"]:
            clis.append([sys.executable, *argv[1:]])
        else:
            raise AssertionError(f"docs/BENCHMARKS.md has a command this test does not know how to check: {argv}")
    assert len(benches) >= 40 and clis   # the doc's commands were found
    r = subprocess.run([sys.executable, "-c", HARNESS, json.dumps(benches), str(ROOT)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    results = json.loads(r.stdout.split("RESULTS ", 1)[1]) if "RESULTS " in r.stdout else None
    assert results is not None, r.stderr[-3000:]
    bad = [(s, a, res) for s, a, res in results if res != "ok"]
    assert not bad, f"{bad}\n{r.stderr[-3000:]}"
    for argv in clis:
        if argv[0] != sys.executable:
            argv[0] = str(pathlib.Path(sys.executable).parent / "slmops")
        c = subprocess.run([*argv, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert c.returncode == 0, f"{argv}: {c.stderr[-2000:]}"
