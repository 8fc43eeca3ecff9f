"""The `slmops` command. Each group imports its side lazily, so an agent-only install (no torch) runs
`slmops agent run` without ever importing training code."""
from __future__ import annotations

import json
import logging
import os
import pathlib
import sys
import time
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from slmops import __version__

console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="SLMOps: small language models for fleets of edge devices.")
cp_app = typer.Typer(no_args_is_help=True, help="Run the control plane.")
agent_app = typer.Typer(no_args_is_help=True, help="Run an edge agent.")
models_app = typer.Typer(no_args_is_help=True, help="Publish and list model versions.")
devices_app = typer.Typer(no_args_is_help=True, help="Devices in the fleet.")
tokens_app = typer.Typer(no_args_is_help=True, help="Enrollment tokens.")
rollout_app = typer.Typer(no_args_is_help=True, help="Decide which device runs which version.")
telemetry_app = typer.Typer(no_args_is_help=True, help="What the fleet reported.")
from training.cli import train_app  # noqa: E402  (imports only typer/rich; torch is imported per command)
keys_app = typer.Typer(no_args_is_help=True, help="Signing keys and root metadata (TUF-style roles).")
from control_plane.pipelines.cli import pipeline_app  # noqa: E402  (typer/rich only until a command runs)
for name, sub in (("control-plane", cp_app), ("agent", agent_app), ("models", models_app),
                  ("devices", devices_app), ("tokens", tokens_app), ("rollout", rollout_app),
                  ("telemetry", telemetry_app), ("train", train_app), ("keys", keys_app),
                  ("pipeline", pipeline_app)):
    app.add_typer(sub, name=name)

CP_OPT = typer.Option(os.environ.get("SLMOPS_CONTROL_PLANE", "127.0.0.1:50051"), "--control-plane",
                      help="control plane address [env SLMOPS_CONTROL_PLANE]")
TOKEN_OPT = typer.Option(None, "--admin-token", help="admin token [env SLMOPS_ADMIN_TOKEN]")
CP_DATA_OPT = typer.Option(None, "--cp-data-dir", help="read the admin token from this control plane data dir")


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def fail(message: str, code: int = 1):
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)  # never hard-wrapped: logs stay greppable
    raise typer.Exit(code)


def _admin(address: str, token: Optional[str], cp_data_dir: Optional[pathlib.Path]):
    from control_plane.admin_client import AdminClient

    token = token or os.environ.get("SLMOPS_ADMIN_TOKEN")
    if not token and cp_data_dir:
        p = pathlib.Path(cp_data_dir) / "admin-token"
        if not p.exists():
            fail(f"no admin token at {p}")
        token = p.read_text().strip()
    if not token:
        fail("an admin token is needed: --admin-token, SLMOPS_ADMIN_TOKEN or --cp-data-dir")
    return AdminClient(address, token, _admin_ca(cp_data_dir))


def _admin_ca(cp_data_dir: Optional[pathlib.Path]) -> Optional[bytes]:
    """The control plane CA to pin: SLMOPS_CA_CERT, else DATA_DIR/keys/ca.pem; None (plaintext) only with
    SLMOPS_INSECURE_LOOPBACK_DEV=1."""
    if os.environ.get("SLMOPS_INSECURE_LOOPBACK_DEV") == "1":
        return None
    path = os.environ.get("SLMOPS_CA_CERT") or (pathlib.Path(cp_data_dir) / "keys" / "ca.pem" if cp_data_dir else None)
    if not path or not pathlib.Path(path).exists():
        fail("TLS needs the control plane's CA: SLMOPS_CA_CERT=DATA_DIR/keys/ca.pem or --cp-data-dir "
             "(plaintext on loopback only with SLMOPS_INSECURE_LOOPBACK_DEV=1)")
    return pathlib.Path(path).read_bytes()


def _admin_call(fn):
    from control_plane.admin_client import AdminError

    try:
        return fn()
    except AdminError as e:
        fail(f"control plane refused: {e}")


def _version_cb(value: bool):
    if value:
        print(f"slmops {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version_cb, is_eager=True)):
    pass


# ---- control plane ---------------------------------------------------------------------------------
@cp_app.command("serve")
def cp_serve(data_dir: pathlib.Path = typer.Option(..., help="folder for the database, blobs and keys"),
             listen: str = typer.Option("127.0.0.1:50051", help="HOST:PORT for gRPC"),
             insecure_loopback_dev: bool = typer.Option(False, "--insecure-loopback-dev",
                                                        help="plaintext gRPC (loopback development only)"),
             max_workers: int = typer.Option(2048, help="gRPC threads; each connected agent's watch holds one"),
             http: str = typer.Option("", help="dashboard + /metrics on PORT (loopback) or HOST:PORT; off if empty"),
             timestamp_expiry: float = typer.Option(86400, help="seconds a signed timestamp stays valid"),
             resign_interval: float = typer.Option(
                 -1, help="seconds between checks that re-sign expiring metadata and pick up new roots "
                          "(default: min(5, expiry/4); 0 disables, e.g. to test freeze defences)"),
             pipeline_jobs: int = typer.Option(1, help="pipelines run at once (each stage in a worker process)")):
    """Serve the fleet, artifact, telemetry and admin APIs over gRPC (and the dashboard with --http)."""
    import datetime as dt

    from control_plane.server import ControlPlaneConfig, serve_forever
    from control_plane.trust_repo import Expiry
    from slmops.errors import ConfigError

    _setup_logging()
    try:
        expiry = Expiry(timestamp=dt.timedelta(seconds=timestamp_expiry))
        serve_forever(ControlPlaneConfig(data_dir=data_dir, listen=listen, http=http, expiry=expiry,
                                         insecure_loopback_dev=insecure_loopback_dev, max_workers=max_workers,
                                         pipeline_jobs=pipeline_jobs,
                                         refresh_s=resign_interval if resign_interval >= 0
                                         else min(5.0, max(0.2, timestamp_expiry / 4))))
    except ConfigError as e:
        fail(str(e))


@keys_app.command("init")
def keys_init(trust_dir: pathlib.Path = typer.Option(..., help="the control plane's DATA_DIR/trust"),
              root_key_dir: Optional[pathlib.Path] = typer.Option(
                  None, help="write the root key here (keep it offline) instead of next to the online keys")):
    """Create one Ed25519 key per role (root, targets, snapshot, timestamp) and root v1."""
    from control_plane.trust_repo import init_trust
    from slmops.errors import ConfigError

    try:
        md = init_trust(trust_dir, root_key_dir)
    except ConfigError as e:
        fail(str(e))
    console.print(f"root v{md.signed.version} written to {trust_dir}/roots/1.root.json; "
                  f"root key in {root_key_dir or trust_dir / 'keys'}")


@keys_app.command("rotate")
def keys_rotate(role: str, trust_dir: pathlib.Path = typer.Option(..., help="the control plane's DATA_DIR/trust"),
                root_key: List[pathlib.Path] = typer.Option(..., help="current root key file(s), to sign"),
                threshold: int = typer.Option(1, help="signatures the role needs from now on"),
                extra_keys: int = typer.Option(0, help="additional keys for the role (for threshold > 1)")):
    """Replace (revoke) every key of ROLE; writes root vN+1 signed by the current root keys. A running control
    plane picks the new root up within seconds and re-signs its metadata; agents follow the root chain."""
    from control_plane.trust_repo import rotate_key
    from slmops.errors import ConfigError

    try:
        md = rotate_key(trust_dir, role, list(root_key), threshold=threshold, extra_keys=extra_keys)
    except ConfigError as e:
        fail(str(e))
    console.print(f"root v{md.signed.version}: {role} now has {len(md.signed.roles[role].keyids)} key(s), "
                  f"threshold {md.signed.roles[role].threshold}")


# ---- agent -----------------------------------------------------------------------------------------
@agent_app.command("run")
def agent_run(control_plane: str = typer.Option(..., help="control plane HOST:PORT"),
              data_dir: pathlib.Path = typer.Option(..., help="the agent's state, blobs and models"),
              http: str = typer.Option("127.0.0.1:8080", help="HOST:PORT of the local OpenAI-compatible API"),
              grpc_listen: str = typer.Option("", "--grpc", help="HOST:PORT of the gRPC inference API (off if empty)"),
              enroll_token: str = typer.Option("", help="needed once, for the first start"),
              device_name: str = typer.Option("", help="defaults to the host name"),
              max_concurrent: int = typer.Option(2, help="generations at once"),
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
                  "cpu", help="preference list; the first that loads the model serves, e.g. cuda,cpu")):
    """Enroll, follow the control plane's desired model, verify, install, serve and report."""
    from edge_agent.agent import Agent
    from edge_agent.config import AgentConfig
    from slmops.errors import ConfigError

    _setup_logging()
    try:
        cfg = AgentConfig.from_env(control_plane=control_plane, data_dir=data_dir, http=http, grpc=grpc_listen,
                                   enroll_token=enroll_token, device_name=device_name,
                                   max_concurrent=max_concurrent, max_queue=max_queue,
                                   telemetry_interval_s=telemetry_interval,
                                   ca_cert=ca_cert, insecure_loopback_dev=insecure_loopback_dev,
                                   sample_interval_s=sample_interval, golden_interval_s=golden_interval,
                                   capture_rate=capture_rate, capture_redactor=capture_redactor,
                                   trusted_root=trusted_root,
                                   min_download_rate_bps=min_download_rate,
                                   download_parallelism=download_parallelism, probation_s=probation,
                                   probation_max_error_ratio=probation_max_error_ratio,
                                   min_free_disk_bytes=min_free_disk_mb << 20, resync_s=resync,
                                   execution_providers=AgentConfig.parse_providers(execution_providers))
    except ConfigError as e:
        fail(str(e))
    Agent(cfg).run()


# ---- admin -----------------------------------------------------------------------------------------
@tokens_app.command("create")
def tokens_create(uses: int = typer.Option(1, help="how many devices may enroll with it"),
                  ttl: int = typer.Option(86400, help="seconds until it expires"),
                  label: List[str] = typer.Option([], "--label", help="KEY=VALUE given to devices enrolling with it"),
                  control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
                  cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT):
    """Create an enrollment token (printed on stdout)."""
    c = _admin(control_plane, admin_token, cp_data_dir)
    t = _admin_call(lambda: c.enroll_token(uses, ttl, _labels(label)))
    print(t.token)


@models_app.command("publish")
def models_publish(bundle_dir: pathlib.Path, name: str = typer.Option(...), version: str = typer.Option(...),
                   control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
                   cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT,
                   chunk_mb: float = typer.Option(4.0, help="files are cut into content-addressed chunks of this "
                                                            "size; chunks the control plane holds are not sent")):
    """Upload an exported ONNX folder and register it as NAME@VERSION (the control plane signs it)."""
    from slmops.errors import ArtifactInvalid
    from slmops.manifest import manifest_for_dir

    info = bundle_dir / "export_info.json"
    if not info.exists():
        fail(f"{bundle_dir} has no export_info.json; export it with `slmops export` first")
    exp = json.loads(info.read_text())
    from training.quality_gate import GateError, check_publishable

    try:  # a variant that failed (or never ran) the quality gate is never published
        verdict = check_publishable(bundle_dir)
    except GateError as e:
        fail(str(e))
    try:
        m = manifest_for_dir(bundle_dir, name, version, exp["precision"], chunk_bytes=int(chunk_mb * (1 << 20)),
                             execution_provider=exp["execution_provider"],
                             metrics={"quality_gate": verdict["metrics"], "reference": verdict["reference"]},
                             adapters=tuple(json.loads((bundle_dir / "adapters.json").read_text())
                                            if (bundle_dir / "adapters.json").exists() else ()))
    except ArtifactInvalid as e:
        fail(str(e))
    c = _admin(control_plane, admin_token, cp_data_dir)
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), console=console) as prog:
        task = prog.add_task(f"upload {m.ref}", total=m.total_bytes)
        r = _admin_call(lambda: c.publish(bundle_dir, m, lambda n: prog.advance(task, n)))
    up = c.last_upload
    console.print(f"published {r.model.name}@{r.model.version}: {len(m.files)} files, "
                  f"{m.total_bytes / 1e6:.2f} MB, precision {m.precision}; uploaded {up['chunks']} chunks "
                  f"({up['bytes'] / 1e6:.2f} MB), {up['reused_chunks']} chunks ({up['reused_bytes'] / 1e6:.2f} MB) "
                  f"were already on the control plane")


@models_app.command("publish-adapter")
def models_publish_adapter(peft_dir: pathlib.Path,
                           base: str = typer.Option(..., help="NAME@VERSION of the published base it runs on"),
                           base_dir: pathlib.Path = typer.Option(..., help="that base's export folder (exported "
                                                                           "with --adapter, so it has LoRA slots)"),
                           adapter: str = typer.Option(..., help="adapter name: requests use MODEL:ADAPTER"),
                           name: str = typer.Option(...), version: str = typer.Option(...),
                           adapter_version: str = typer.Option("1"),
                           control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
                           cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT):
    """Publish a new LoRA adapter as an adapter-only version: a few KB-MB that names its base. Agents that hold
    the base fetch only the adapter; the control plane refuses it if the base is not published or does not fit."""
    import tempfile

    from slmops.errors import ArtifactInvalid
    from slmops.manifest import manifest_for_dir
    from training.adapters import AdapterError, convert_adapter

    base_name, _, base_version = base.partition("@")
    if not base_name or not base_version:
        fail(f"--base must be NAME@VERSION, got {base!r}")
    info = base_dir / "export_info.json"
    if not info.exists():
        fail(f"{base_dir} has no export_info.json; pass the base's export folder")
    exp = json.loads(info.read_text())
    with tempfile.TemporaryDirectory(prefix="adapter-bundle-") as tmp:
        bundle = pathlib.Path(tmp)
        try:
            convert_adapter(peft_dir, base_dir, bundle / f"{adapter}.onnx_adapter")
            m = manifest_for_dir(bundle, name, version, exp["precision"],
                                 execution_provider=exp["execution_provider"],
                                 base={"name": base_name, "version": base_version},
                                 adapters=({"name": adapter, "path": f"{adapter}.onnx_adapter",
                                            "version": adapter_version},))
        except (AdapterError, ArtifactInvalid) as e:
            fail(str(e))
        c = _admin(control_plane, admin_token, cp_data_dir)
        r = _admin_call(lambda: c.publish(bundle, m))
    console.print(f"published {r.model.name}@{r.model.version}: adapter {adapter} on {base}, "
                  f"{m.total_bytes / 1e3:.1f} KB uploaded {c.last_upload['bytes'] / 1e3:.1f} KB; "
                  f"serve it as {name}:{adapter}")


@models_app.command("bundle")
def models_bundle(name: str, version: str, out: pathlib.Path = typer.Option(..., help="FILE.slmops.tar"),
                  cp_data_dir: pathlib.Path = typer.Option(..., help="the control plane's data folder")):
    """Write an offline bundle for air-gapped devices: drop it into an agent's sideload folder."""
    from control_plane.bundle_export import export_bundle
    from slmops.errors import ArtifactInvalid

    if not out.name.endswith(".slmops.tar"):
        fail("the bundle file name must end in .slmops.tar (agents watch for that suffix)")
    try:
        export_bundle(cp_data_dir, name, version, out)
    except ArtifactInvalid as e:
        fail(str(e))
    console.print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")


@models_app.command("list")
def models_list(control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
                cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT):
    c = _admin(control_plane, admin_token, cp_data_dir)
    t = Table("name", "version", "precision", "size MB", "published")
    for v in _admin_call(c.models):
        t.add_row(v.model.name, v.model.version, v.precision, f"{v.total_bytes / 1e6:.2f}",
                  time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v.created_unix_ms / 1000)))
    Console().print(t)


@rollout_app.command("set")
def rollout_set(name: str, version: str,
                device: List[str] = typer.Option([], help="device id (repeat); none = the whole fleet"),
                control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
                cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT):
    """Make NAME@VERSION the desired model of the given devices, or of the whole fleet."""
    c = _admin(control_plane, admin_token, cp_data_dir)
    n = _admin_call(lambda: c.set_desired(name, version, device))
    console.print(f"{name}@{version} is now desired on {n} device(s)"
                  + ("" if device else " and on every device that enrolls later"))


@devices_app.command("list")
def devices_list(label: List[str] = typer.Option([], "--label", help="only devices with KEY=VALUE (repeat)"),
                 hw: List[str] = typer.Option([], "--hw", help="only this hardware class (repeat)"),
                 control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
                 cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT):
    c = _admin(control_plane, admin_token, cp_data_dir)
    t = Table("device", "name", "state", "hw", "labels", "current", "desired", "pinned", "last seen", "message")
    rows = _admin_call(lambda: c.select_devices(_labels(label), hw)) if label or hw else _admin_call(c.devices)
    for d in rows:
        cur = f"{d.current.name}@{d.current.version}" if d.current.name else "-"
        des = f"{d.desired.name}@{d.desired.version}" if d.desired.name else "-"
        t.add_row(d.device_id, d.name, d.state, d.hardware.hardware_class or "-",
                  ",".join(f"{k}={v}" for k, v in sorted(d.labels.items())) or "-", cur, des,
                  f"{d.pinned.name}@{d.pinned.version}" if d.pinned.name else "-",
                  f"{(time.time() * 1000 - d.last_seen_unix_ms) / 1000:.0f} s ago", d.message[:60])
    Console().print(t)


@telemetry_app.command("summary")
def telemetry_summary(device: str = typer.Option("", help="one device id"),
                      since: str = typer.Option("", help="90s, 15m, 2h, 7d, seconds or an ISO time ('' = all)"),
                      control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
                      cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT):
    """Per device: requests, errors, p50/p95 latency, tokens, tokens/s, other events."""
    c = _admin(control_plane, admin_token, cp_data_dir)
    print_telemetry(_admin_call(lambda: c.telemetry(device, _since_ms(since))))


def _since_ms(since: str) -> int:
    from slmops.since import parse_since

    try:
        return parse_since(since, int(time.time() * 1000))
    except ValueError as e:
        fail(str(e))


@devices_app.command("show")
def devices_show(device: str = typer.Argument(..., help="device id or name"),
                 since: str = typer.Option("1h", help="window for the figures: 15m, 2h, 7d, an ISO time"),
                 control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
                 cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT):
    """One device: state, versions, recent figures, the last minutes and its recent events."""
    c = _admin(control_plane, admin_token, cp_data_dir)
    matches = [d for d in _admin_call(c.devices) if device in (d.device_id, d.name)]
    if len(matches) != 1:
        fail(f"{'no' if not matches else len(matches)} devices match {device!r}")
    d, since_ms, out = matches[0], _since_ms(since), Console()
    ref = lambda m: f"{m.name}@{m.version}" if m.name else "-"  # noqa: E731
    out.print(f"[bold]{d.name}[/] {d.device_id}  state {d.state}  serving {ref(d.current)}  desired "
              f"{ref(d.desired)}  last seen {(time.time() * 1000 - d.last_seen_unix_ms) / 1000:.0f} s ago  "
              f"agent {d.agent_version}" + (f"\n{d.message}" if d.message else ""))
    print_telemetry(_admin_call(lambda: c.telemetry(d.device_id, since_ms)))
    t = Table("minute", "requests", "errors", "p50 ms", "p95 ms", "tok/s", "CPU %", "RSS MB", "golden fails",
              title="last minutes")
    for m in list(_admin_call(lambda: c.rollups(d.device_id, since_ms)))[-10:]:
        t.add_row(time.strftime("%H:%M", time.localtime(m.minute_unix_ms / 1000)), str(m.requests), str(m.errors),
                  f"{m.p50_latency_ms:.0f}", f"{m.p95_latency_ms:.0f}", f"{m.tokens_per_s:.1f}",
                  f"{m.cpu_percent:.0f}" if m.cpu_percent >= 0 else "-",
                  f"{m.rss_bytes / 1e6:.0f}" if m.rss_bytes >= 0 else "-", str(m.golden_failed))
    out.print(t)
    t = Table("when", "kind", "name", "model", "outcome", "detail", title="recent events")
    for e in _admin_call(lambda: c.events(d.device_id, since_ms, 10)):
        t.add_row(time.strftime("%H:%M:%S", time.localtime(e.ts_unix_ms / 1000)), e.kind, e.name, e.model or "-",
                  e.outcome, e.detail[:60])
    out.print(t)


def print_telemetry(rows) -> None:
    t = Table("device", "requests", "errors", "p50 ms", "p95 ms", "tokens in", "tokens out", "tok/s", "events")
    for r in rows:
        t.add_row(r.device_id, str(r.requests), str(r.errors), f"{r.p50_latency_ms:.0f}", f"{r.p95_latency_ms:.0f}",
                  str(r.tokens_in), str(r.tokens_out), f"{r.tokens_per_s:.1f}", str(r.events))
    Console().print(t)


# ---- training / export -----------------------------------------------------------------------------
@app.command("export")
def export(source: pathlib.Path = typer.Argument(..., help="a recipe file (YAML/JSON) or a Hugging Face folder"),
           out_dir: pathlib.Path = typer.Argument(...),
           precision: Optional[str] = typer.Option(None, help="fp32, fp16, int8 or int4 [recipe, else int4]"),
           execution_provider: Optional[str] = typer.Option(None, help="cpu, cuda or dml [recipe, else cpu]"),
           int4_block_size: Optional[int] = typer.Option(None), int4_symmetric: Optional[bool] = typer.Option(None),
           int4_accuracy_level: Optional[int] = typer.Option(None),
           int4_algo: Optional[str] = typer.Option(None, help="default (RTN), rtn, k_quant, k_quant_last (lm_head "
                                                             "int8), k_quant_mixed"),
           fallback: bool = typer.Option(True, help="when the precision fails the quality gate, try the next "
                                                    "(int4 -> int8 -> fp16 -> fp32)"),
           gate_examples: int = typer.Option(0, help="eval examples for the gate (0 = all)"),
           adapter: List[str] = typer.Option([], help="NAME=PEFT_DIR (repeat): export the base with LoRA slots "
                                                      "and each adapter as adapters/NAME.onnx_adapter")):
    """Export to ONNX (onnxruntime-genai builder), run the quality gate against fp32 and keep the first
    precision that passes; writes gate.json (needed by `models publish`) and gate_report.json."""
    from rich.table import Table as _Table

    from training.export import ExportError, ExportOptions
    from training.quality_gate import GateError, GateThresholds, from_recipe, select_precision

    try:
        if source.is_file():
            model_dir, opts, thresholds = from_recipe(source)
        else:
            model_dir, opts, thresholds = source, {}, GateThresholds()
        given = dict(precision=precision, execution_provider=execution_provider, int4_block_size=int4_block_size,
                     int4_symmetric=int4_symmetric, int4_accuracy_level=int4_accuracy_level, int4_algo=int4_algo)
        opts.update({k: v for k, v in given.items() if v is not None})
        first = opts.pop("precision", "int4")
        base = ExportOptions(**{**opts, "precision": "fp32"})
        ExportOptions(**{**opts, "precision": first})  # refuse a bad precision/target before any work
        if gate_examples:
            thresholds = GateThresholds(**{**thresholds.__dict__, "max_examples": gate_examples})
        t0 = time.monotonic()
        build = {}
        if adapter:
            from training.adapters import slotted_build

            pairs = [a.partition("=") for a in adapter]
            if any(not n or not d for n, _, d in pairs):
                fail("--adapter takes NAME=PEFT_DIR")
            build = {"build": slotted_build({n: pathlib.Path(d) for n, _, d in pairs})}
        report = select_precision(model_dir, out_dir, first, base, thresholds, log=console.print, **build)
        if not fallback and report["chosen"] != first:
            import shutil

            shutil.rmtree(out_dir, ignore_errors=True)
            fail(f"{first} failed the quality gate and --no-fallback was given: {report['why']}")
    except (ExportError, GateError) as e:
        fail(str(e))
    t = _Table("precision", "size MB", "vs fp32", "perplexity", "accuracy", "greedy agreement", "gate")
    ref_bytes = report["reference_bytes"]
    t.add_row("fp32 (reference)", f"{ref_bytes / 1e6:.2f}", "100%", f"{report['reference']['perplexity']:.3f}",
              f"{report['reference']['accuracy']:.1%}", "-", "reference")
    for row in report["tried"]:
        mt = row["metrics"] or {}
        size = row["bytes"]  # None when the variant could not even be built here
        t.add_row(row["precision"], f"{size / 1e6:.2f}" if size else "-", f"{size / ref_bytes:.0%}" if size else "-",
                  f"{mt.get('perplexity', float('nan')):.3f}", f"{mt.get('accuracy', float('nan')):.1%}",
                  f"{mt.get('greedy_agreement', float('nan')):.1%}", "passed" if row["passed"] else "failed")
    console.print(t)
    console.print(f"chose {report['chosen']} ({report['why']}) -> {out_dir} in {time.monotonic() - t0:.1f} s")


@app.command("demo")
def demo(tiny: bool = typer.Option(False, "--tiny", help="tiny models trained in seconds (the CI path)"),
         workdir: Optional[pathlib.Path] = typer.Option(None, help="keep everything here (default: a temp dir); "
                                                                   "a re-run reuses trained models"),
         agents: int = typer.Option(3, help="how many agents to start"),
         keep_running: bool = typer.Option(False, help="leave the fleet and dashboard up until Ctrl-C")):
    """The main job end to end on loopback: base -> LoRA -> distilled student -> gated ONNX -> signed ->
    control plane -> agents -> canary + waves under load -> answers, accuracy, sizes, speeds, telemetry."""
    from control_plane.demo import DemoFailed, run_demo

    if agents < 2:
        fail("--agents must be at least 2 (a canary and the rest)")
    try:
        run_demo(tiny=tiny, workdir=workdir, n_agents=agents, console=console, keep_running=keep_running)
    except DemoFailed as e:
        fail(str(e))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
