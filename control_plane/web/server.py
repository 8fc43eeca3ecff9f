"""Runs the dashboard app with uvicorn on a thread of the control-plane process."""
from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time

import uvicorn

from slmops.errors import ConfigError

log = logging.getLogger("slmops.control_plane.web")


def parse_http(value: str) -> tuple[str, int]:
    """"PORT" (loopback) or "HOST:PORT"."""
    host, _, port = value.rpartition(":")
    host = host or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"--http {value!r} must be PORT or HOST:PORT")
    return host, int(port)


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class HttpServer:
    def __init__(self, app, host: str, port: int):
        if not is_loopback(host):
            log.warning("dashboard binds %s beyond loopback over plain HTTP: the admin token travels unencrypted",
                        host)
        self.sock = socket.create_server((host, port))  # bound now, so the port is known and errors surface here
        self.host, self.port = host, self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                                    timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="dashboard-http", daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)
        self.sock.close()
