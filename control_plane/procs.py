"""Starting SLMOps processes on loopback (the demo and the e2e tests use the same code)."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child process whose output goes to a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, args: list[str], log_path: pathlib.Path, env: dict | None = None):
        self.name, self.log_path = name, pathlib.Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen([sys.executable, "-m", "cli", *args], stdout=self._log,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()

    def kill(self) -> None:
        if self.alive():
            self.popen.kill()
            self.popen.wait()


def start_control_plane(data_dir: pathlib.Path, port: int, log_dir: pathlib.Path, extra: list[str] = (),
                        env: dict | None = None, tls: bool = False) -> Proc:
    """Plaintext on loopback unless `tls` (then clients pin DATA_DIR/keys/ca.pem)."""
    transport = [] if tls else ["--insecure-loopback-dev"]
    return Proc("control-plane", ["control-plane", "serve", "--data-dir", str(data_dir),
                                  "--listen", f"127.0.0.1:{port}", *transport, *extra],
                log_dir / "control-plane.log", env)


def start_agent(name: str, cp_port: int, data_dir: pathlib.Path, http_port: int, token: str,
                log_dir: pathlib.Path, extra: list[str] = (), env: dict | None = None,
                ca_cert: pathlib.Path | None = None, cp_address: str = "") -> Proc:
    """TLS pinned to `ca_cert` when given, else plaintext to the loopback control plane. `cp_address` replaces
    127.0.0.1:CP_PORT (e.g. several replicas, comma separated)."""
    args = ["agent", "run", "--control-plane", cp_address or f"127.0.0.1:{cp_port}", "--data-dir", str(data_dir),
            "--http", f"127.0.0.1:{http_port}", "--device-name", name, "--telemetry-interval", "0.5"]
    args += ["--ca-cert", str(ca_cert)] if ca_cert else ["--insecure-loopback-dev"]
    if token:
        args += ["--enroll-token", token]
    return Proc(name, args + list(extra), log_dir / f"{name}.log", env)


def http_json(url: str, body: dict | None = None, timeout: float = 60.0, headers: dict | None = None):
    """(status, parsed JSON) for GET (body None) or POST."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def wait_serving(proc: Proc, http_port: int, want_ref: str, timeout: float) -> None:
    """Waits until the agent's /readyz names `want_ref`; raises with the agent's log tail otherwise."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.log_tail()}")
        try:
            status, body = http_json(f"http://127.0.0.1:{http_port}/readyz", timeout=2)
            last = body
            if status == 200 and body.get("model") == want_ref:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} not serving {want_ref} after {timeout:.0f} s (last /readyz: {last}):\n"
                       f"{proc.log_tail()}")
