"""Replicas with data folders of their own share one identity (control_plane/identity.py): a control plane whose data
folder would give the database a second trust root or TLS CA is refused before it makes or signs anything, until
`slmops control-plane copy-identity` gives it the running one's; two fresh ones starting at once on a new
database: exactly one identity wins."""
from __future__ import annotations

import pathlib
import stat
import subprocess
import sys

import pytest

from control_plane.identity import CA_KEY, TRUST_KEY, verdict
from control_plane.server import ControlPlane, ControlPlaneConfig
from slmops.errors import ConfigError
from tests.test_storage_backends import at_once

SLMOPS = [str(pathlib.Path(sys.executable).with_name("slmops"))]


def make(data_dir, state: str) -> ControlPlane:
    return ControlPlane(ControlPlaneConfig(data_dir=data_dir, listen="127.0.0.1:0", state=state))


def slmops(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*SLMOPS, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("mine, recorded, signed, words", [
    ({TRUST_KEY: "a" * 64, CA_KEY: "c" * 64}, {}, False, ""),                              # the first one
    ({TRUST_KEY: None, CA_KEY: None}, {}, False, ""),                                       # fresh, fresh database
    ({TRUST_KEY: "a" * 64, CA_KEY: "c" * 64}, {TRUST_KEY: "a" * 64, CA_KEY: "c" * 64}, True, ""),   # a replica
    ({TRUST_KEY: "b" * 64, CA_KEY: "c" * 64}, {TRUST_KEY: "a" * 64}, True, "trust root is aaaaaaaaaaaa"),
    ({TRUST_KEY: "a" * 64, CA_KEY: "d" * 64}, {TRUST_KEY: "a" * 64, CA_KEY: "c" * 64}, True, "TLS CA is cccc"),
    ({TRUST_KEY: None, CA_KEY: None}, {TRUST_KEY: "a" * 64}, True, "this data folder has none"),
    ({TRUST_KEY: None}, {}, True, "holds signed trust metadata"),                           # recorded before this
    ({TRUST_KEY: "a" * 64}, {}, True, ""),                                                  # adopted on upgrade
])
def test_which_data_folders_may_serve_a_database(mine, recorded, signed, words):
    why = verdict(mine, recorded, signed)
    assert (words in why and "copy-identity" in why) if words else why == "", why


def test_a_replica_with_its_own_data_folder_is_refused_until_it_copies_the_identity(state_url, tmp_path):
    a = make(tmp_path / "a", state_url)
    with pytest.raises(ConfigError, match="copy-identity") as refused:
        make(tmp_path / "b", state_url)
    assert "trust root" in str(refused.value)
    assert not (tmp_path / "b" / "trust").exists() and not (tmp_path / "b" / "keys").exists()   # nothing made

    done = slmops("control-plane", "copy-identity", str(tmp_path / "a"), str(tmp_path / "b"))
    assert done.returncode == 0, done.stderr
    for key in [*(tmp_path / "b" / "trust" / "keys").glob("*.pem"), tmp_path / "b" / "keys" / "ca-key.pem"]:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    b = make(tmp_path / "b", state_url)
    assert b.repo.state.raw == a.repo.state.raw   # the same signed chain, not a new one
    assert (tmp_path / "b" / "keys" / "ca.pem").read_bytes() == (tmp_path / "a" / "keys" / "ca.pem").read_bytes()
    assert slmops("control-plane", "copy-identity", str(tmp_path / "a"), str(tmp_path / "b")).returncode == 0

    make(tmp_path / "other", str(tmp_path / "other.db"))   # another control plane with its own database
    refused = slmops("control-plane", "copy-identity", str(tmp_path / "a"), str(tmp_path / "other"))
    assert refused.returncode == 1 and "refusing to replace" in refused.stdout + refused.stderr, refused
    missing = slmops("control-plane", "copy-identity", str(tmp_path / "nothing"), str(tmp_path / "c"))
    assert missing.returncode == 1 and "not a control plane's data folder" in missing.stdout + missing.stderr


@pytest.mark.pg
def test_two_fresh_replicas_starting_at_once_on_a_new_database_end_with_one_identity(pg_url, tmp_path):
    def start(i):
        try:
            return make(tmp_path / f"r{i}", pg_url)
        except ConfigError as e:
            return e
    got = at_once(2, start)
    won = [g for g in got if isinstance(g, ControlPlane)]
    lost = [i for i, g in enumerate(got) if isinstance(g, ConfigError)]
    assert len(won) == 1 and len(lost) == 1, got
    loser = tmp_path / f"r{lost[0]}"
    assert not (loser / "trust").exists(), "the loser's own trust root was left behind"
    assert slmops("control-plane", "copy-identity", str(tmp_path / f"r{1 - lost[0]}"), str(loser)).returncode == 0
    assert make(loser, pg_url).repo.state.raw == won[0].repo.state.raw
