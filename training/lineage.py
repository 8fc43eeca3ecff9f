"""lineage.json: where a trained model came from (base, data hashes, recipe, metrics, library versions).
The control plane attaches it when the model is published, so a device's model can be traced to its run.
"""
from __future__ import annotations

import json
import pathlib
import subprocess
import time

from training.dataset import file_sha256

SCHEMA = 1


def _git_commit() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                           cwd=pathlib.Path(__file__).parent)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def lineage(recipe, data_files: list[str], metrics: dict, extra: dict | None = None) -> dict:
    import peft
    import torch
    import transformers

    return {
        "schema": SCHEMA,
        "created_unix": int(time.time()),
        "method": recipe.method,
        "base": recipe.base.describe(),
        # "resolved": the absolute path, so a later step run elsewhere (publish in the control plane) finds it
        "data": [{"path": str(p), "resolved": str(pathlib.Path(p).resolve()), "sha256": file_sha256(p)}
                 for p in data_files],
        "recipe": {"sha256": recipe.sha256, "text": recipe.text},
        "metrics": metrics,
        "code": {"git_commit": _git_commit(), "torch": torch.__version__, "transformers": transformers.__version__,
                 "peft": peft.__version__},
        **(extra or {}),
    }


def write(folders: list[pathlib.Path], record: dict) -> None:
    """The same lineage.json into every output folder (the run, the model, each adapter)."""
    body = json.dumps(record, indent=1, default=str)
    for folder in folders:
        folder = pathlib.Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / ".lineage.json.tmp"
        tmp.write_text(body)
        tmp.replace(folder / "lineage.json")
