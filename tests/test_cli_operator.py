"""The operator's commands through the real CLI (typer's CliRunner, in-process) against a real control plane on
loopback: each refusal is one line naming what was wrong, a non-zero exit, never a traceback, and the control
plane audits it; lists have --json for scripts and tables fit 80 columns."""
import json

import pytest
from typer.testing import CliRunner

from cli.main import app

pytestmark = pytest.mark.e2e
runner = CliRunner()


@pytest.fixture
def cp(cluster, tiny_int4):
    cluster.start_cp()
    cluster.publish(tiny_int4, "tiny", "v1")
    return cluster


def slmops(cp, *args, token=None, ok=True):
    env = {"SLMOPS_INSECURE_LOOPBACK_DEV": "1", "COLUMNS": "80",
           "SLMOPS_ADMIN_TOKEN": token or (cp.cp_dir / "admin-token").read_text().strip()}
    r = runner.invoke(app, [*args, "--control-plane", cp.address], env=env)
    text = r.output
    assert "Traceback" not in text, text
    assert r.exception is None or isinstance(r.exception, SystemExit), text
    if ok:
        assert r.exit_code == 0, text
    else:
        assert r.exit_code != 0, f"{args} should have been refused:\n{text}"
        errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1, f"want one error line, got:\n{text}"
        return errors[0]
    return r.stdout


def audited(cp, action: str, result: str) -> bool:
    return any(e.result == result for e in cp.admin.audit(action=action))


def test_every_refusal_is_one_line_a_non_zero_exit_and_audited(cp):
    line = slmops(cp, "models", "list", token="slm_admin_not-a-token", ok=False)
    assert "UNAUTHENTICATED" in line and "admin token" in line
    assert audited(cp, "ListModels", "UNAUTHENTICATED")

    viewer = slmops(cp, "tokens", "api", "--role", "viewer", "--name", "vera").strip()
    assert viewer.startswith("slm_")
    line = slmops(cp, "rollout", "set", "tiny", "v1", token=viewer, ok=False)
    assert "PERMISSION_DENIED" in line and "needs role operator" in line and "vera" in line
    assert any(e.who == "vera" and e.result == "PERMISSION_DENIED" for e in cp.admin.audit(actor="vera"))
    assert "vera" in slmops(cp, "audit", "--actor", "vera", "--since", "1h", "--json")

    line = slmops(cp, "rollout", "set", "tiny", "v9", ok=False)
    assert "NOT_FOUND" in line and "tiny@v9" in line
    assert audited(cp, "SetDesiredVersion", "NOT_FOUND")

    line = slmops(cp, "rollout", "create", "tiny@v1", ok=False)
    assert "selector" in line and "empty" in line
    assert audited(cp, "CreateRollout", "INVALID_ARGUMENT")
    line = slmops(cp, "rollout", "create", "tiny@v9", "--all", ok=False)
    assert "v9" in line

    line = slmops(cp, "rollout", "pause", "ro_doesnotexist", ok=False)
    assert "ro_doesnotexist" in line and audited(cp, "PauseRollout", "NOT_FOUND")
    line = slmops(cp, "tokens", "revoke", "tok_000000000000", ok=False)
    assert "tok_000000000000" in line and audited(cp, "RevokeEnrollToken", "NOT_FOUND")
    line = slmops(cp, "tokens", "api-revoke", "api_000000000000", ok=False)
    assert "api_000000000000" in line

    # refused before the control plane is asked: named, non-zero, one line
    assert "KEY=VALUE" in slmops(cp, "tokens", "create", "--label", "nolabel", ok=False)
    assert "--uses" in slmops(cp, "tokens", "create", "--uses", "0", ok=False)
    assert "NAME@VERSION" in slmops(cp, "rollout", "create", "tiny", "--all", ok=False)
    assert "--canary or --waves" in slmops(cp, "rollout", "create", "tiny@v1", "--all", "--canary", "1",
                                           "--waves", "50%", ok=False)
    assert "wave 'x%'" in slmops(cp, "rollout", "create", "tiny@v1", "--all", "--waves", "x%", ok=False)
    assert "--role" in slmops(cp, "tokens", "api", "--role", "root", "--name", "x", ok=False)
    assert "no device" in slmops(cp, "devices", "show", "nosuchdevice", ok=False)
    assert "--since" in slmops(cp, "audit", "--since", "yesterday-ish", ok=False)
    assert "no published model" in slmops(cp, "models", "show", "nosuchmodel", ok=False)


def test_pause_of_a_finished_rollout_is_refused_and_audited(cp):
    cp.start_agent("k1")
    cp.wait_for(lambda: cp.admin.devices(), timeout=60, what="the device enrolling")
    rid = slmops(cp, "rollout", "create", "tiny@v1", "--all").strip().splitlines()[-1]
    assert rid.startswith("ro_")
    slmops(cp, "rollout", "status", rid, "--wait", "--timeout", "180")
    line = slmops(cp, "rollout", "pause", rid, ok=False)
    assert "completed" in line and "FAILED_PRECONDITION" in line
    assert audited(cp, "PauseRollout", "FAILED_PRECONDITION")
    listed = json.loads(slmops(cp, "rollout", "list", "--json"))
    assert [r["rollout_id"] for r in listed] == [rid] and listed[0]["status"] == "completed"


def test_lists_have_json_and_tables_fit_80_columns(cp):
    token = slmops(cp, "tokens", "create", "--uses", "2", "--label", "site=berlin").strip()
    cp.start_agent("kiosk-with-a-rather-long-name", token=token)
    cp.wait_for(lambda: cp.admin.devices(), timeout=60, what="the device enrolling")
    for args in (("devices", "list"), ("tokens", "list"), ("tokens", "api-list"), ("models", "list"),
                 ("rollout", "list"), ("telemetry", "summary"), ("audit",), ("pipeline", "list"),
                 ("models", "show", "tiny")):
        table = slmops(cp, *args)
        wide = [ln for ln in table.splitlines() if len(ln) > 80]
        assert not wide, f"{args} is wider than 80 columns:\n{table}"
        rows = json.loads(slmops(cp, *args, "--json"))
        assert isinstance(rows, list)
    devices = json.loads(slmops(cp, "devices", "list", "--json"))
    assert devices[0]["labels"] == {"site": "berlin"} and devices[0]["name"] == "kiosk-with-a-rather-long-name"
    tokens = json.loads(slmops(cp, "tokens", "list", "--json"))
    assert tokens[0]["token_id"].startswith("tok_") and token not in json.dumps(tokens)  # never the secret
    assert slmops(cp, "devices", "list", "--label", "site=berlin", "--json").count("device_id") == 1
    assert json.loads(slmops(cp, "devices", "list", "--label", "site=paris", "--json")) == []
    shown = json.loads(slmops(cp, "devices", "show", "kiosk-with-a-rather-long-name", "--json"))
    assert shown["device_id"] == devices[0]["device_id"]
    slmops(cp, "tokens", "revoke", token)  # by the secret itself: hashed here, never sent
    assert json.loads(slmops(cp, "tokens", "list", "--json"))[0]["revoked"] is True
    slmops(cp, "devices", "delete", "kiosk-with-a-rather-long-name")
    assert json.loads(slmops(cp, "devices", "list", "--json")) == []


def test_plaintext_admin_token_only_goes_to_loopback(monkeypatch):
    r = runner.invoke(app, ["models", "list", "--control-plane", "10.1.2.3:50051", "--admin-token", "x"],
                      env={"SLMOPS_INSECURE_LOOPBACK_DEV": "1"})
    assert r.exit_code == 1 and "plaintext" in r.output and "10.1.2.3" in r.output


def test_rollout_create_carries_the_quality_gates(cp):
    line = slmops(cp, "rollout", "create", "tiny@v1", "--all", "--min-feedback", "2", ok=False)
    assert "INVALID_ARGUMENT" in line and "gate.min_feedback_score" in line
    cp.start_agent("gated-1")
    cp.wait_for(lambda: cp.admin.devices(), what="the agent enrolling")
    gate = json.loads(slmops(cp, "rollout", "create", "tiny@v1", "--all", "--min-golden-pass", "0.9",
                             "--min-feedback", "0.5", "--json"))["gate"]
    assert (gate["min_golden_pass_ratio"], gate["min_feedback_score"]) == (0.9, 0.5)
