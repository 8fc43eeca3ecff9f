"""The committed gRPC code in slmops/v1 must match protos/: regenerate and compare byte for byte."""
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))


def test_generated_code_is_fresh(tmp_path):
    from gen_protos import generate

    generated = generate(tmp_path)
    assert generated, "protoc generated nothing"
    stale = []
    for new in generated:
        committed = ROOT / "slmops" / "v1" / new.name
        if not committed.exists() or committed.read_bytes() != new.read_bytes():
            stale.append(new.name)
    assert not stale, f"slmops/v1 is stale for {stale}: run `.venv/bin/python scripts/gen_protos.py`"
