"""Issue 17 on real processes (control plane with dashboard, an agent capturing every request, loopback gRPC and
HTTP): v1 is published with the profile of its training data, the traffic moves to another topic, the telemetry
job's drift check crosses the lexical threshold, and that shows as a control-plane event, on /metrics, in
`slmops drift`, on the dashboard's drift view in headless Chromium; then the captures become a dataset that
training/dataset.py reads."""
from __future__ import annotations

import json
import pathlib
import re
import urllib.request

import pytest
from typer.testing import CliRunner

from cli.main import app
from control_plane.procs import free_port
from tests.test_dashboard_chromium import ARTIFACTS, CHROMIUM, chromium, signed_in
from tests.test_telemetry_e2e import FAST, start_cp_with_http
from training.dataset import load_jsonl
from training.publish import data_profile

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN = "training/data/support_train.jsonl"
SHIFTED = [f"How long should I bake a sourdough loaf number {n} in a hot oven with steam?" for n in range(14)]
CROSSED = 'slmops_cp_drift_crossed{group="input",model="tiny@v1",signal="input_lexical_js"} 1.0'


def cli(*args: str) -> str:
    r = CliRunner().invoke(app, list(args), env={"COLUMNS": "80"})
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    return r.stdout


def test_a_topic_shift_is_seen_in_events_metrics_cli_and_dashboard_and_becomes_a_dataset(cluster, tiny_int4,
                                                                                          tmp_path):
    http_port = free_port()
    start_cp_with_http(cluster, http_port)
    m = cluster.publish(tiny_int4, "tiny", "v1", metrics={"data_profile": data_profile([ROOT / TRAIN])})
    cluster.admin.set_desired("tiny", "v1")
    cluster.start_agent("kiosk-d", extra=FAST + ["--capture-rate", "1"])
    cluster.wait_serving("kiosk-d", m.ref)
    for prompt in SHIFTED:
        status, body = cluster.chat("kiosk-d", prompt)
        assert status == 200, body
    base = f"http://127.0.0.1:{http_port}"

    def metrics() -> str:
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
            return r.read().decode()
    # the telemetry job checks drift every 30 s; the captures have to arrive first
    cluster.wait_for(lambda: CROSSED in metrics(), timeout=180, what="the lexical drift gauge over its threshold")
    assert 'slmops_cp_drift_threshold{group="input",model="tiny@v1",signal="input_lexical_js"} 0.2' in metrics()
    events = cluster.admin.events("control-plane")
    crossing = [e for e in events if e.name == "drift_threshold_crossed" and "input_lexical_js" in e.detail]
    assert len(crossing) == 1 and crossing[0].model == "tiny@v1", events

    rep = json.loads(cli("drift", "tiny@v1", "--cp-data-dir", str(cluster.cp_dir), "--json"))[0]
    lexical = next(s for s in rep["signals"] if s["name"] == "input_lexical_js")
    assert lexical["crossed"] and lexical["n"] >= len(SHIFTED) and rep["has_profile"]
    table = cli("drift", "tiny@v1", "--cp-data-dir", str(cluster.cp_dir))
    assert re.search(r"input_lexical_js .*DRIFT", table), table

    if CHROMIUM is not None:   # the dashboard's drift view (skipped only where Debian's chromium is missing)
        token = (cluster.cp_dir / "admin-token").read_text().strip()
        profile, page = tmp_path / "chromium-profile", "/drift?model=tiny%40v1"
        dom = chromium(profile, signed_in(base, token, page), "--dump-dom")
        assert re.search(r'<tr data-model="tiny@v1">.*?input_lexical_js', dom, re.S), dom[:3000]
        chart = re.search(r'data-signal="input_lexical_js" data-crossed="1">\s*<svg id="drift-input_lexical_js"'
                          r'[^>]*data-points="(\d+)"', dom)
        assert chart and int(chart.group(1)) >= 2, dom[:3000]    # value point(s) + the threshold line
        assert 'data-series="threshold"' in dom
        ARTIFACTS.mkdir(exist_ok=True)
        chromium(profile, signed_in(base, token, page), f"--screenshot={ARTIFACTS / 'dashboard-drift.png'}")
        assert (ARTIFACTS / "dashboard-drift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    out = tmp_path / "captured"
    info = json.loads(cli("dataset", "from-captures", str(out), "--cp-data-dir", str(cluster.cp_dir), "--model",
                          "tiny@v1", "--since", "1h", "--heldout", "0.25", "--exclude-data", str(ROOT / TRAIN),
                          "--json"))
    records = load_jsonl(out / "train.jsonl") + load_jsonl(out / "heldout.jsonl")
    assert info["counts"]["kept"] == len(records) == len(SHIFTED)
    assert {ex.messages[0]["content"] for ex in records} == set(SHIFTED)
    assert all(ex.fields["provenance"]["model"] == "tiny@v1" for ex in records)
