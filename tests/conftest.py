"""Shared fixtures: a tiny model exported once per session, and real control plane / agent processes."""
from __future__ import annotations

import contextlib
import json
import pathlib
import shutil
import time

import pytest

from control_plane.admin_client import AdminClient, wait_healthy
from control_plane.procs import free_port, http_json, start_agent, start_control_plane, wait_serving
from slmops.manifest import manifest_for_dir


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory) -> pathlib.Path:
    from training.tiny import build_tiny_model

    out = tmp_path_factory.mktemp("tiny") / "hf"
    build_tiny_model(out, steps=60, log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def tiny_int4(tiny_hf, tmp_path_factory) -> pathlib.Path:
    from training.export import ExportOptions, export_onnx

    return export_onnx(tiny_hf, tmp_path_factory.mktemp("onnx") / "int4", ExportOptions("int4"), log=lambda m: None)


def variant(src: pathlib.Path, dest: pathlib.Path, temperature_marker: int) -> pathlib.Path:
    """A copy of an export whose genai_config.json differs, so the version has at least one new blob."""
    shutil.copytree(src, dest)
    cfg = json.loads((dest / "genai_config.json").read_text())
    cfg["search"]["top_k"] = temperature_marker
    (dest / "genai_config.json").write_text(json.dumps(cfg, indent=1))
    return dest


class Cluster:
    """A control plane process plus any number of agent processes, all on loopback, stopped at teardown."""

    def __init__(self, root: pathlib.Path):
        self.root = root
        self.logs = root / "logs"
        self.cp_port = free_port()
        self.cp_dir = root / "cp"
        self.procs = []
        self.cp = None
        self.admin: AdminClient | None = None
        self.agents = {}
        self.tls = False  # True: the control plane serves TLS and agents/admin pin cp/keys/ca.pem

    @property
    def ca(self) -> pathlib.Path | None:
        return self.cp_dir / "keys" / "ca.pem" if self.tls else None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.cp_port}"

    def start_cp(self, extra: list[str] = (), env: dict | None = None):
        self.cp = start_control_plane(self.cp_dir, self.cp_port, self.logs, extra, env, tls=self.tls)
        self.procs.append(self.cp)
        deadline = time.monotonic() + 30
        while self.tls and not self.ca.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        ca_pem = self.ca.read_bytes() if self.tls else None
        wait_healthy(self.address, timeout=30, ca_pem=ca_pem)
        if self.admin is None:
            self.admin = AdminClient(self.address, (self.cp_dir / "admin-token").read_text().strip(), ca_pem)
        return self.cp

    def publish(self, bundle: pathlib.Path, name: str, version: str, **extra):
        m = manifest_for_dir(bundle, name, version, extra.pop("precision", "int4"), **extra)
        self.admin.publish(bundle, m)
        return m

    def start_agent(self, name: str, token: str | None = None, **kw):
        port = free_port()
        if token is None:
            token = self.admin.enroll_token(uses=1).token
        p = start_agent(name, self.cp_port, self.root / name, port, token, self.logs, ca_cert=self.ca, **kw)
        self.procs.append(p)
        self.agents[name] = (p, port)
        return p, port

    def restart_agent(self, name: str, kill: bool = False, **kw):
        """Stops (or SIGKILLs) the agent and starts it again on the same data folder and port, no token."""
        p, port = self.agents[name]
        p.kill() if kill else p.stop()
        p2 = start_agent(name, self.cp_port, self.root / name, port, "", self.logs, ca_cert=self.ca, **kw)
        self.procs.append(p2)
        self.agents[name] = (p2, port)
        return p2, port

    def wait_serving(self, name: str, ref: str, timeout: float = 60):
        p, port = self.agents[name]
        wait_serving(p, port, ref, timeout)

    def chat(self, name: str, content: str = "What does error E17 mean on the Kestrel K2?", **kw):
        _, port = self.agents[name]
        return http_json(f"http://127.0.0.1:{port}/v1/chat/completions",
                         {"messages": [{"role": "user", "content": content}], "max_tokens": 16, **kw})

    def device(self, name: str):
        return next(d for d in self.admin.devices() if d.name == name)

    def wait_for(self, predicate, timeout: float = 30, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def stop(self):
        if self.admin:
            self.admin.close()
        for p in reversed(self.procs):
            p.stop()


@contextlib.contextmanager
def serving_cluster(root: pathlib.Path, bundle: pathlib.Path):
    """A control plane with `bundle` published as tiny@v1 (the fleet default) and agent a1 serving it; yields
    (cluster, manifest) and stops everything afterwards (for module-scoped fixtures of attack tests)."""
    c = Cluster(root)
    try:
        c.start_cp()
        m1 = c.publish(bundle, "tiny", "v1")
        c.admin.set_desired("tiny", "v1")
        c.start_agent("a1")
        c.wait_serving("a1", m1.ref)
        yield c, m1
    finally:
        c.stop()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.stop()


def pytest_collection_modifyitems(session, config, items):
    """The real-model (slow) tests first: under pytest-xdist (scripts/test.sh) their file then starts on one
    worker while the other works through the rest, instead of running alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


# PostgreSQL and S3-protocol servers and the backend parameters (pg_url, s3_blob_config, state_url, blob_config,
# cp_backend): tests/pg_fixtures.py. Tests marked `pg` use them; `pytest -m pg` runs only those.
from tests.pg_fixtures import (blob_config, cp_backend, pg_server, pg_url, s3_blob_config,  # noqa: E402,F401
                               s3_server, state_url)
