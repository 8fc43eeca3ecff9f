"""The operator's path as the docs tell it: every shell block of README's "Using it by hand" and of
docs/PIPELINES.md, run as written in one bash session (set -e: a missing command or a non-zero exit fails it),
against a real control plane and agent on loopback with TLS. Only the two documented ports are replaced by free
ones. Keep the docs and this test in step: a documented command that fails is a defect."""
import os
import pathlib
import re
import signal
import subprocess

import pytest

from control_plane.procs import free_port

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]


def shell_blocks(path: pathlib.Path, section: str | None = None) -> list[str]:
    """The ```bash blocks of a Markdown file, or of one `## section` of it."""
    text = path.read_text()
    if section is not None:
        start = text.index(f"## {section}\n")
        nxt = text.find("\n## ", start + 3)
        text = text[start:nxt if nxt >= 0 else None]
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)


def test_the_docs_have_the_blocks_this_test_runs():
    readme = shell_blocks(ROOT / "README.md", "Using it by hand")
    assert len(readme) >= 3 and all("slmops" in b for b in readme)
    assert any("pipeline submit" in b for b in shell_blocks(ROOT / "docs/PIPELINES.md"))


def test_operator_path_in_readme_and_pipelines_doc_runs_as_written(tmp_path):
    blocks = shell_blocks(ROOT / "README.md", "Using it by hand") + shell_blocks(ROOT / "docs/PIPELINES.md")
    cp_port, http_port = free_port(), free_port()
    script = "\n".join(blocks).replace("127.0.0.1:50051", f"127.0.0.1:{cp_port}") \
        .replace("127.0.0.1:8080", f"127.0.0.1:{http_port}")
    for name in (".venv", "training"):  # the docs run from the repository root: same relative paths here
        (tmp_path / name).symlink_to(ROOT / name)
    (tmp_path / "docs.sh").write_text(
        "set -euo pipefail -x\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n" + script)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLMOPS_")}
    log = tmp_path / "docs.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bash", "docs.sh"], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=1700)
        finally:
            try:  # the documented `&` processes (control plane, agent) and anything they started
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    text = log.read_text(errors="replace")
    (ROOT / "test-artifacts").mkdir(exist_ok=True)
    (ROOT / "test-artifacts" / "docs-commands.log").write_text(text)
    assert rc == 0, f"a documented command failed (rc {rc}); the last lines:\n" + "\n".join(text.splitlines()[-40:])
    assert '"choices"' in text, "the documented curl got no completion"
    assert "refused, as it should be" in text and "PERMISSION_DENIED" in text, "the viewer was not refused"
    assert re.search(r"error: ro_\w+ aborted", text) and "aborted, as asked" in text, \
        "the documented abort did not abort"
    assert "Traceback" not in text
