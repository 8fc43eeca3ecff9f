"""`slmops drift` through the real CLI (typer's CliRunner) over a real control plane data folder: the table fits
80 columns and marks the signal that crossed, --json carries every signal with its window and baseline, a device
group narrows it, and each bad input is one `error:` line."""
import json

from typer.testing import CliRunner

from cli.main import app
from control_plane.drift_monitor import now_ms
from control_plane.store import Store
from slmops import text_profile as tp
from tests.test_drift import BAKING, SUPPORT, _events, _publish_row

runner = CliRunner()


def run(*args, ok=True):
    r = runner.invoke(app, list(args), env={"COLUMNS": "80"})
    assert "Traceback" not in r.output and (r.exception is None or isinstance(r.exception, SystemExit)), r.output
    if ok:
        assert r.exit_code == 0, r.output
        return r.stdout
    assert r.exit_code != 0
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, r.output
    return errors[0]


def fleet(tmp_path):
    cp = tmp_path / "cp"
    cp.mkdir()
    store = Store(cp / "control_plane.db")
    _publish_row(store, tmp_path, "v1", tp.profile(SUPPORT))
    store.add_telemetry("dev-a", _events(BAKING[:30], now_ms() - 20_000))
    store.add_telemetry("dev-b", _events(SUPPORT[:30], now_ms() - 20_000))
    return cp, store


def test_drift_shows_each_signal_and_marks_the_one_over_its_threshold(tmp_path):
    cp, store = fleet(tmp_path)
    out = run("drift", "support@v1", "--cp-data-dir", str(cp))
    assert all(len(line) <= 80 for line in out.splitlines()), out
    rows = {ln.split("│")[1].strip(): ln for ln in out.splitlines() if ln.count("│") > 3}
    assert "DRIFT" in rows["input_lexical_js"] and "n/a" in rows["input_semantic_mmd"]
    assert "error_rate_rise" in rows and "golden_pass_drop" in rows and "feedback_score_drop" in rows
    rep = json.loads(run("drift", "--cp-data-dir", str(cp), "--json"))
    assert [r["model"] for r in rep] == ["support@v1"]
    lex = next(s for s in rep[0]["signals"] if s["name"] == "input_lexical_js")
    assert lex["crossed"] and lex["baseline"].startswith("training data profile") and lex["n"] == 60


def test_a_device_group_sees_only_its_own_traffic(tmp_path):
    cp, store = fleet(tmp_path)
    for name in ("dev-a", "dev-b"):
        store.db["devices"].insert({"device_id": name, "name": name, "labels": json.dumps({"site": name})},
                                   alter=True)

    def lexical(site):
        rep = json.loads(run("drift", "support@v1", "--cp-data-dir", str(cp), "--label", f"site={site}", "--json"))
        return next(s for s in rep[0]["signals"] if s["name"] == "input_lexical_js")
    assert lexical("dev-a")["crossed"] and not lexical("dev-b")["crossed"]
    assert "no device has the labels site=nowhere" in run("drift", "--cp-data-dir", str(cp), "--label",
                                                          "site=nowhere", ok=False)


def test_bad_drift_queries_are_one_error_line(tmp_path):
    cp, _ = fleet(tmp_path)
    line = run("drift", "support@v9", "--cp-data-dir", str(cp), ok=False)
    assert "no published version support@v9 (published: v1)" in line
    assert "no model 'other'" in run("drift", "other@v1", "--cp-data-dir", str(cp), ok=False)
    assert "must be NAME@VERSION" in run("drift", "support", "--cp-data-dir", str(cp), ok=False)
    assert "no control plane data" in run("drift", "--cp-data-dir", str(tmp_path / "none"), ok=False)
    assert "--window 'soon' must be a duration" in run("drift", "--cp-data-dir", str(cp), "--window", "soon", ok=False)
    assert "--baseline '0s' must be" in run("drift", "--cp-data-dir", str(cp), "--baseline", "0s", ok=False)
    assert "KEY=VALUE" in run("drift", "--cp-data-dir", str(cp), "--label", "site", ok=False)
