"""The dashboard in real headless Chromium (Debian's `chromium`, installed by scripts/setup.sh), on live data
from a control plane and an agent: DOM assertions on the rendered pages and screenshots in test-artifacts/."""
from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request

import pytest

from control_plane.procs import free_port
from tests.test_telemetry_e2e import FAST, GOLDEN, start_cp_with_http

pytestmark = pytest.mark.e2e
ARTIFACTS = pathlib.Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1500"]


def chromium(profile: pathlib.Path, url: str, *args: str) -> str:
    r = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args, url], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def signed_in(base: str, token: str, page: str) -> str:
    return f"{base}/login?" + urllib.parse.urlencode({"token": token, "next": page})


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/setup.sh installs it)")
def test_dashboard_shows_live_fleet_device_charts_and_events(cluster, tiny_int4, tmp_path):
    http_port = free_port()
    start_cp_with_http(cluster, http_port)
    m = cluster.publish(tiny_int4, "tiny", "v1", golden_prompts=GOLDEN)
    cluster.admin.set_desired("tiny", "v1")
    cluster.start_agent("kiosk-7", extra=FAST)
    cluster.wait_serving("kiosk-7", m.ref)
    for _ in range(4):
        status, body = cluster.chat("kiosk-7")
        assert status == 200, body
    did = cluster.device("kiosk-7").device_id
    cluster.wait_for(lambda: cluster.admin.telemetry(did) and cluster.admin.telemetry(did)[0].requests == 4,
                     what="the 4 requests at the control plane")
    cluster.wait_for(lambda: any(x.cpu_percent >= 0 for x in cluster.admin.rollups(did)), what="a resource sample")
    ro = cluster.admin.create_rollout("tiny", "v1", {"all_devices": True}, "all", gate={"min_soak_seconds": 0.0})
    cluster.wait_for(lambda: cluster.admin.rollout(ro.rollout_id).status == "completed", what="the rollout")
    base, token = f"http://127.0.0.1:{http_port}", (cluster.cp_dir / "admin-token").read_text().strip()

    with pytest.raises(urllib.error.HTTPError) as e:  # no token: no data
        urllib.request.urlopen(f"{base}/api/fleet", timeout=10)
    assert e.value.code == 401

    ARTIFACTS.mkdir(exist_ok=True)
    profile = tmp_path / "chromium-profile"
    dom = chromium(profile, signed_in(base, token, "/"), "--dump-dom")
    row = re.search(rf'<tr class="device" data-device-id="{did}" data-health="(\w+)">(.*?)</tr>', dom, re.S)
    assert row, dom[:3000]
    assert row.group(1) == "healthy"
    assert "kiosk-7" in row.group(2) and f'<td class="current">{m.ref}</td>' in row.group(2)
    assert int(re.search(r'<td class="requests">(\d+)</td>', row.group(2)).group(1)) == 4
    assert re.search(r'data-kpi="devices"><b>1</b>', dom)
    assert f'data-ref="{m.ref}"' in dom
    ro_row = re.search(rf'<tr class="rollout" data-rollout-id="{ro.rollout_id}" data-status="completed">(.*?)</tr>',
                       dom, re.S)
    assert ro_row and '<td class="succeeded">1</td>' in ro_row.group(1) and m.ref in ro_row.group(1)
    assert 'data-name="swap"' in dom
    chromium(profile, signed_in(base, token, "/"), f"--screenshot={ARTIFACTS / 'dashboard-fleet.png'}")

    dom = chromium(profile, signed_in(base, token, f"/devices/{did}"), "--dump-dom")
    assert f'data-device-id="{did}"' in dom
    assert re.search(r'<span class="requests">4</span> requests', dom)
    for chart in ("chart-latency", "chart-tokens", "chart-requests", "chart-cpu", "chart-rss"):
        points = re.search(rf'<svg id="{chart}"[^>]*data-points="(\d+)"', dom)
        assert points and int(points.group(1)) > 0, chart
    assert dom.count('class="series"') >= 6
    assert 'data-kind="golden"' in dom and 'data-name="swap"' in dom
    chromium(profile, signed_in(base, token, f"/devices/{did}"), f"--screenshot={ARTIFACTS / 'dashboard-device.png'}")
    for png in ("dashboard-fleet.png", "dashboard-device.png"):
        assert (ARTIFACTS / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/setup.sh installs it)")
def test_dashboard_shows_pipelines_that_ran_through_the_queue(cluster, tmp_path):
    """A tiny pipeline really run by the control plane (train -> ... -> publish -> rollout to a real agent) and
    one whose train stage crashes, seen through the JSON API and in Chromium: list and per-pipeline pages."""
    import json

    from tests.test_pipeline_e2e import ROOT, recipe, wait_status

    http_port = free_port()
    start_cp_with_http(cluster, http_port)
    cluster.start_agent("edge-p")
    cluster.wait_for(lambda: cluster.admin.devices(), what="the agent enrolling")
    cache = str(tmp_path / "model-cache")
    bad = cluster.admin.submit_pipeline(recipe(cache, rollout=False, name="crash", stages=("train", "export"),
                                               train_set=["base.source=hf", f"base.path={tmp_path / 'nowhere'}"]),
                                        str(ROOT))
    ok = cluster.admin.submit_pipeline(recipe(cache), str(ROOT))
    bad = wait_status(cluster, bad.job_id, ("failed",), timeout=300)
    ok = wait_status(cluster, ok.job_id, ("succeeded", "failed"), timeout=600)
    assert ok.status == "succeeded", ok.reason
    base, token = f"http://127.0.0.1:{http_port}", (cluster.cp_dir / "admin-token").read_text().strip()

    def api(path: str) -> dict:
        req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    with pytest.raises(urllib.error.HTTPError) as e:  # no token: no data
        urllib.request.urlopen(f"{base}/api/pipelines", timeout=10)
    assert e.value.code == 401
    rows = {p["job_id"]: p for p in api("/api/pipelines")["pipelines"]}
    assert rows[ok.job_id]["progress"] == {"finished": 6, "total": 6} and rows[ok.job_id]["current_stage"] is None
    assert rows[ok.job_id]["published"] == ok.published
    assert rows[ok.job_id]["rollout"]["rollout_id"] == ok.rollout_id
    assert rows[ok.job_id]["rollout"]["status"] == "completed" and rows[ok.job_id]["rollout"]["succeeded"] == 1
    assert rows[bad.job_id]["current_stage"] == {"index": 0, "kind": "train", "status": "failed"}
    d = api(f"/api/pipelines/{ok.job_id}")["pipeline"]
    assert d["stages"][3]["metrics"]["chosen"] in ("int4", "fp32")
    assert d["stages"][3]["metrics"]["evaluated_on"] == "cpu"
    assert d["stages"][1]["inputs"]["model_dir"] == d["stages"][0]["outputs"]["model_dir"]
    assert any(f"published {ok.published}" in ln["line"] for ln in d["log_tail"])

    ARTIFACTS.mkdir(exist_ok=True)
    profile = tmp_path / "chromium-profile"
    dom = chromium(profile, signed_in(base, token, "/pipelines"), "--dump-dom")
    row = re.search(rf'<tr class="pipeline" data-job-id="{ok.job_id}" data-status="succeeded">(.*?)</tr>', dom, re.S)
    assert row, dom[:3000]
    assert f'<td class="published">{ok.published}</td>' in row.group(1)
    assert f'data-rollout-id="{ok.rollout_id}" data-status="completed"' in row.group(1)
    assert '<span class="progress">6/6</span>' in row.group(1) and row.group(1).count('data-status="done"') == 6
    row = re.search(rf'<tr class="pipeline" data-job-id="{bad.job_id}" data-status="failed">(.*?)</tr>', dom, re.S)
    assert row and '<td class="current">0 train (failed)</td>' in row.group(1)
    assert "stage 0 train failed" in row.group(1)
    chromium(profile, signed_in(base, token, "/pipelines"), f"--screenshot={ARTIFACTS / 'dashboard-pipelines.png'}")

    dom = chromium(profile, signed_in(base, token, f"/pipelines/{ok.job_id}"), "--dump-dom")
    assert f'<section id="pipeline" data-job-id="{ok.job_id}" data-status="succeeded">' in dom
    for i, kind in enumerate(["train", "evaluate", "export", "gate", "publish", "rollout"]):
        assert f'<tr class="stage" data-stage="{i}" data-kind="{kind}" data-status="done">' in dom, kind
    log_tail = re.search(r'<pre id="log-tail">(.*?)</pre>', dom, re.S).group(1)
    assert "stage 0 train: done" in log_tail and f"published {ok.published}" in log_tail
    assert "&quot;chosen&quot;" in dom or '"chosen"' in dom   # the gate's metrics
    chromium(profile, signed_in(base, token, f"/pipelines/{ok.job_id}"),
             f"--screenshot={ARTIFACTS / 'dashboard-pipeline.png'}")

    dom = chromium(profile, signed_in(base, token, f"/pipelines/{bad.job_id}"), "--dump-dom")
    failure = re.search(r'<p class="reason" id="failure">(.*?)</p>', dom, re.S)
    assert failure and "stage 0 train failed: the worker exited with status 1" in failure.group(1)
    assert "nowhere" in dom   # the log tail names the missing folder
    assert '<tr class="stage" data-stage="0" data-kind="train" data-status="failed">' in dom
    for png in ("dashboard-pipelines.png", "dashboard-pipeline.png"):
        assert (ARTIFACTS / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
