"""The dashboard's pipeline views over plain HTTP (Starlette's test client, no processes): the admin token is
needed as for every other page; JSON and HTML show status, current stage, progress per stage, the publish result,
inputs/outputs/metrics, the log tail and the failure reason. The real-browser test against a control plane that
really ran a pipeline is tests/test_dashboard_chromium.py."""
from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from control_plane.pipelines import plan
from control_plane.pipelines.jobs import Jobs
from control_plane.store import Store
from control_plane.telemetry_views import TelemetryViews
from control_plane.web.app import build_app


@pytest.fixture()
def dash(tmp_path):
    store = Store(tmp_path / "cp.db")
    token = store.create_admin_token()
    jobs = Jobs(store)
    ok = jobs.add("chain", "name: chain\nstages: []\n", "/repo", ["train", "train", "export", "gate", "publish"],
                  "op")
    jobs.transition(ok, plan.START)
    for i in range(5):
        jobs.set_stage(ok, i, status=plan.STAGE_DONE, key=f"{i}" * 64, started_ms=1000 + i, finished_ms=2000 + i,
                       attempts=1, inputs={"model_dir": f"/m{i}"}, outputs={"model_dir": f"/m{i + 1}"},
                       metrics={"loss": 0.5 + i}, message="done in 1.0 s")
    jobs.update(ok, published="support@v-1")
    jobs.transition(ok, plan.DONE, "")
    jobs.log(ok, 0, ["stage 0 train: running", "stage 0 train: done in 1.0 s"])
    bad = jobs.add("crash", "name: crash\n", "/repo", ["train", "export"], "op")
    jobs.transition(bad, plan.START)
    jobs.set_stage(bad, 0, status=plan.STAGE_FAILED, started_ms=5000, finished_ms=6000, attempts=1,
                   message="the worker exited with status 1; log tail:\nFileNotFoundError: nowhere")
    jobs.transition(bad, plan.FAIL, "stage 0 train failed: the worker exited with status 1")
    app = build_app(store, TelemetryViews(store))
    with TestClient(app) as client:
        yield client, token, ok, bad


def test_pipelines_need_the_admin_token(dash):
    client, _, ok, _ = dash
    for path in ("/api/pipelines", f"/api/pipelines/{ok}"):
        assert client.get(path).status_code == 401
    assert client.get("/pipelines").status_code == 401
    assert client.get("/api/pipelines", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_pipelines_json(dash):
    client, token, ok, bad = dash
    h = {"Authorization": f"Bearer {token}"}
    rows = {p["job_id"]: p for p in client.get("/api/pipelines", headers=h).json()["pipelines"]}
    assert rows[ok]["status"] == "succeeded" and rows[ok]["progress"] == {"finished": 5, "total": 5}
    assert rows[ok]["current_stage"] is None and rows[ok]["published"] == "support@v-1"
    assert rows[ok]["started_ms"] == 1000 and rows[ok]["finished_ms"] > 0
    assert [s["kind"] for s in rows[ok]["stages"]] == ["train", "train", "export", "gate", "publish"]
    assert rows[bad]["current_stage"] == {"index": 0, "kind": "train", "status": "failed"}
    assert rows[bad]["reason"].startswith("stage 0 train failed")
    only = client.get("/api/pipelines?status=failed", headers=h).json()["pipelines"]
    assert [p["job_id"] for p in only] == [bad]

    d = client.get(f"/api/pipelines/{ok}", headers=h).json()["pipeline"]
    assert d["stages"][1]["inputs"] == {"model_dir": "/m1"} and d["stages"][1]["outputs"] == {"model_dir": "/m2"}
    assert d["stages"][4]["metrics"] == {"loss": 4.5} and d["stages"][0]["key"] == "0" * 64
    assert [ln["line"] for ln in d["log_tail"]][-1] == "stage 0 train: done in 1.0 s"
    assert d["recipe"].startswith("name: chain")
    r = client.get("/api/pipelines/pl_nope", headers=h)
    assert r.status_code == 404 and "pl_nope" in r.json()["error"]


def test_pipelines_html(dash):
    client, token, ok, bad = dash
    h = {"Authorization": f"Bearer {token}"}
    page = client.get("/pipelines", headers=h).text
    assert f'data-job-id="{ok}" data-status="succeeded"' in page and f'data-job-id="{bad}" data-status="failed"' in page
    assert '<td class="published">support@v-1</td>' in page and '<span class="progress">5/5</span>' in page
    page = client.get(f"/pipelines/{bad}", headers=h).text
    assert 'id="failure"' in page and "FileNotFoundError: nowhere" in page
    assert 'data-stage="0" data-kind="train" data-status="failed"' in page
    assert client.get("/pipelines/pl_nope", headers=h).status_code == 404
    assert 'href="/pipelines"' in client.get("/", headers=h).text   # the fleet page links to them
