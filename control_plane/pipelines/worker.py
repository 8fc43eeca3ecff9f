"""A worker process: `python -m control_plane.pipelines.worker SPEC.json` runs one stage.

SPEC.json: {kind, config, inputs, out_dir, cache_dir}. The stage writes into out_dir (a staging folder the
manager renames only after a clean exit), and result.json ({outputs, metrics}) is written last, atomically, by
rank 0. Exit status: 0 done, 2 refused by a threshold (StageFailed), 1 crashed (traceback in the log).
Under torchrun every rank runs the same stage (DDP); only rank 0 writes.
"""
from __future__ import annotations

import json
import os
import pathlib
import sys
import traceback

RESULT = "result.json"


def main(argv: list[str]) -> int:
    from control_plane.pipelines.executor import MEMORY_ENV, apply_limits

    apply_limits(int(os.environ.get(MEMORY_ENV, "0") or 0))
    from control_plane.pipelines.stages import RUN, StageFailed

    spec = json.loads(pathlib.Path(argv[0]).read_text())
    out = pathlib.Path(spec["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))

    def log(*parts, **_):
        if rank == 0:
            print(" ".join(str(p) for p in parts), flush=True)

    log(f"stage {spec['kind']} starting (pid {os.getpid()}, world {os.environ.get('WORLD_SIZE', '1')})")
    try:
        outputs, metrics = RUN[spec["kind"]](spec["config"], spec["inputs"], out, log, spec["cache_dir"])
    except StageFailed as e:
        log(f"stage {spec['kind']} refused: {e}")
        return 2
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        return 1
    if rank == 0:
        tmp = out / f".{RESULT}.tmp"
        tmp.write_text(json.dumps({"outputs": outputs, "metrics": metrics}, default=str))
        tmp.replace(out / RESULT)
        log(f"stage {spec['kind']} done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
