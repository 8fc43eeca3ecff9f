"""Agent config: the enrollment token from a file or the environment (never needed on the command line)."""
from __future__ import annotations

import pytest

from edge_agent.config import AgentConfig
from slmops.errors import ConfigError


def cfg(tmp_path, **kw):
    return AgentConfig.from_env(control_plane="127.0.0.1:1", data_dir=tmp_path, insecure_loopback_dev=True, **kw)


def test_enroll_token_from_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_ENROLL_TOKEN", "from-env")
    f = tmp_path / "token"
    f.write_text("from-file\n")
    assert cfg(tmp_path, enroll_token_file=f).enrollment_token() == "from-file"


def test_enroll_token_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_ENROLL_TOKEN", " from-env \n")
    assert cfg(tmp_path).enrollment_token() == "from-env"
    assert cfg(tmp_path, enroll_token="given").enrollment_token() == "given"
    monkeypatch.delenv("SLMOPS_ENROLL_TOKEN")
    assert cfg(tmp_path).enrollment_token() == ""


def test_enroll_token_file_is_checked_at_construction(tmp_path):
    with pytest.raises(ConfigError, match="not a file"):
        cfg(tmp_path, enroll_token_file=tmp_path / "missing")
    f = tmp_path / "token"
    f.write_text("t")
    with pytest.raises(ConfigError, match="not both"):
        cfg(tmp_path, enroll_token="x", enroll_token_file=f)
