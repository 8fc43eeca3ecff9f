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
