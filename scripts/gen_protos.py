"""Regenerates the committed gRPC code in slmops/v1/ from protos/slmops/v1/*.proto.

Run after editing a .proto:  .venv/bin/python scripts/gen_protos.py
tests/test_protos_fresh.py fails when the committed code is stale.
"""
from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    from grpc_tools import protoc
    import grpc_tools

    protos = sorted((ROOT / "protos").glob("slmops/v1/*.proto"))
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = ["protoc", f"-I{ROOT / 'protos'}", f"-I{include}", f"--python_out={out_dir}",
            f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}"]
    args += [str(p.relative_to(ROOT / "protos")) for p in protos]
    import os
    cwd = os.getcwd()
    os.chdir(ROOT / "protos")
    try:
        rc = protoc.main(args)
    finally:
        os.chdir(cwd)
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc}")
    (out_dir / "slmops" / "v1" / "__init__.py").touch()
    return sorted((out_dir / "slmops" / "v1").glob("*_pb2*.py*"))


if __name__ == "__main__":
    generate(ROOT)
    print("regenerated", ROOT / "slmops" / "v1", file=sys.stderr)
