"""The device's identity with the control plane: hardware facts, enrollment once (with backoff while the
control plane is away), and the saved identity loaded at every start."""
from __future__ import annotations

import logging
import platform
import shutil
import threading

import grpc

from edge_agent import trust
from edge_agent.config import AGENT_VERSION, AgentConfig
from edge_agent.control_client import Backoff, Refused
from edge_agent.state import AgentState
from slmops.errors import TransportError
from slmops.v1 import common_pb2

log = logging.getLogger("slmops.agent")


def hardware_facts(data_dir) -> common_pb2.Hardware:
    import onnxruntime
    import psutil

    providers = [p.replace("ExecutionProvider", "").lower() for p in onnxruntime.get_available_providers()]
    return common_pb2.Hardware(hardware_class="gpu" if "cuda" in providers else "cpu",
                               execution_providers=providers, ram_bytes=psutil.virtual_memory().total,
                               disk_free_bytes=shutil.disk_usage(data_dir).free, arch=platform.machine())


def load_identity(state: AgentState, client) -> str:
    """The saved device id ("" before enrollment); the client gets the device token."""
    ident = state.get("identity")
    if not ident:
        return ""
    client.token = ident["token"]
    return ident["device_id"]


def enroll(cfg: AgentConfig, state: AgentState, client, stop: threading.Event, save_trusted) -> str:
    """Enrolls once (retrying while the control plane is unreachable) and returns the device id; "" when
    stopped first. Pins the control plane's root unless one is trusted already (--trusted-root)."""
    device_id = load_identity(state, client)
    if device_id:
        return device_id
    token = cfg.enrollment_token()
    if not token:
        raise Refused(grpc.StatusCode.UNAUTHENTICATED, "this agent is not enrolled yet: give it an enrollment token "
                      "(enroll_token_file, SLMOPS_ENROLL_TOKEN or --enroll-token)")
    backoff = Backoff(cfg.backoff_initial_s, cfg.backoff_max_s)
    name = cfg.device_name or platform.node()
    while not stop.is_set():
        try:
            resp = client.enroll(token, name, hardware_facts(cfg.data_dir), AGENT_VERSION)
            break
        except TransportError as e:
            delay = backoff.next()
            log.warning("control plane %s not reachable (%s); retrying enrollment in %.1f s", cfg.control_plane,
                        e, delay)
            stop.wait(delay)
    else:
        return ""
    if state.get("trust") is None:
        save_trusted(trust.Trusted(root=resp.trusted_root))
    state.put("identity", {"device_id": resp.device_id, "token": resp.device_token, "name": name})
    client.token = resp.device_token
    log.info("enrolled as %s", resp.device_id)
    return resp.device_id
