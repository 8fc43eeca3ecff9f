"""`slmops agent run`: the edge agent (no torch, transformers or peft are imported on this path)."""
from __future__ import annotations

import pathlib
from typing import Optional

import typer

from cli.common import fail, setup_logging

agent_app = typer.Typer(no_args_is_help=True, help="Run an edge agent.")


@agent_app.command("run")
def agent_run(control_plane: str = typer.Option(
        ..., help="control plane HOST:PORT; replicas of one control plane comma separated, tried in turn"),
              data_dir: pathlib.Path = typer.Option(..., help="the agent's state, blobs and models"),
              http: str = typer.Option("127.0.0.1:8080", help="HOST:PORT of the local OpenAI-compatible API"),
              grpc_listen: str = typer.Option("", "--grpc", help="HOST:PORT of the gRPC inference API (off if empty)"),
              enroll_token: str = typer.Option("", help="needed once, for the first start [env "
                                                        "SLMOPS_ENROLL_TOKEN; on the command line ps shows it]"),
              enroll_token_file: Optional[pathlib.Path] = typer.Option(
                  None, help="read the enrollment token from this file (kept out of ps and shell history)"),
              device_name: str = typer.Option("", help="defaults to the host name"),
              max_concurrent: int = typer.Option(4, help="sequences generating at once (batched together)"),
              batch_wait_ms: float = typer.Option(10.0, help="ms a request waits for others to batch with"),
              max_queue: int = typer.Option(8, help="requests waiting before 429"),
              telemetry_interval: float = typer.Option(2.0, help="seconds between telemetry uploads"),
              ca_cert: Optional[pathlib.Path] = typer.Option(
                  None, help="the control plane's keys/ca.pem (pinned into DATA_DIR/identity at first start)"),
              insecure_loopback_dev: bool = typer.Option(False, "--insecure-loopback-dev",
                                                         help="plaintext gRPC to a loopback control plane (dev)"),
              sample_interval: float = typer.Option(60.0, help="seconds between resource samples (0 = off)"),
              golden_interval: float = typer.Option(0.0, help="seconds between golden-prompt checks (0 = off)"),
              capture_rate: float = typer.Option(0.0, help="share of requests captured, redacted (0 = off)"),
              capture_redactor: str = typer.Option("", help="redaction hook module:function (str -> str)"),
              trusted_root: Optional[pathlib.Path] = typer.Option(
                  None, help="root.json shipped with the device (else the control plane's root is pinned at "
                             "enrollment)"),
              min_download_rate: int = typer.Option(0, help="bytes/s below which a download is abandoned"),
              download_parallelism: int = typer.Option(4, min=1, max=32, help="chunks fetched at once"),
              probation: float = typer.Option(30.0, help="seconds a new model is watched before it is committed"),
              probation_max_error_ratio: float = typer.Option(0.2, help="failed-request ratio that rolls back"),
              min_free_disk_mb: int = typer.Option(256, help="refuse updates that would leave less free disk"),
              resync: float = typer.Option(30.0, help="seconds between re-checks of the desired state"),
              execution_providers: str = typer.Option(
                  "cpu", help="preference list; the first that loads the model serves, e.g. cuda,cpu"),
              inference_threads: int = typer.Option(
                  0, help="threads a model computes with (0 = one per core this agent may run on)")):
    """Enroll, follow the control plane's desired model, verify, install, serve and report."""
    from edge_agent.agent import Agent
    from edge_agent.config import AgentConfig
    from slmops.errors import ConfigError

    setup_logging()
    try:
        cfg = AgentConfig.from_env(control_plane=control_plane, data_dir=data_dir.resolve(), http=http, grpc=grpc_listen,
                                   enroll_token=enroll_token, enroll_token_file=enroll_token_file,
                                   device_name=device_name,
                                   max_concurrent=max_concurrent, max_queue=max_queue,
                                   batch_wait_ms=batch_wait_ms,
                                   telemetry_interval_s=telemetry_interval,
                                   ca_cert=ca_cert, insecure_loopback_dev=insecure_loopback_dev,
                                   sample_interval_s=sample_interval, golden_interval_s=golden_interval,
                                   capture_rate=capture_rate, capture_redactor=capture_redactor,
                                   trusted_root=trusted_root,
                                   min_download_rate_bps=min_download_rate,
                                   download_parallelism=download_parallelism, probation_s=probation,
                                   probation_max_error_ratio=probation_max_error_ratio,
                                   min_free_disk_bytes=min_free_disk_mb << 20, resync_s=resync,
                                   execution_providers=AgentConfig.parse_providers(execution_providers),
                                   inference_threads=inference_threads)
    except ConfigError as e:
        fail(str(e))
    Agent(cfg).run()




@agent_app.command("wait")
def wait(http: str = typer.Option("127.0.0.1:8080", help="HOST:PORT of the agent's local API"),
         model: str = typer.Option("", help="wait until it serves this NAME@VERSION (default: any model)"),
         timeout: float = typer.Option(120.0, help="seconds before giving up (exit 1)")):
    """Wait until an agent is ready to answer (its /readyz names a model), e.g. after its first start."""
    import time

    from cli.common import console
    from control_plane.procs import http_json

    deadline, last = time.monotonic() + timeout, "no answer"
    while time.monotonic() < deadline:
        try:
            status, body = http_json(f"http://{http}/readyz", timeout=2)
            if status == 200 and (not model or body.get("model") == model):
                console.print(f"agent at {http} serves {body.get('model')}")
                return
            last = f"HTTP {status}, serving {(body or {}).get('model')}"
        except (OSError, ValueError) as e:
            last = str(e)
        time.sleep(0.3)
    fail(f"agent at {http} not ready{' with ' + model if model else ''} after {timeout:.0f} s (last: {last})")
