"""`slmops control-plane serve|copy-identity|wait` and `slmops keys init|rotate`."""
from __future__ import annotations

import pathlib
from typing import List, Optional

import typer

from cli.common import console, fail, setup_logging

cp_app = typer.Typer(no_args_is_help=True, help="Run the control plane.")
keys_app = typer.Typer(no_args_is_help=True, help="Signing keys and root metadata (TUF-style roles).")


@cp_app.command("serve")
def serve(data_dir: pathlib.Path = typer.Option(..., help="folder for the database, blobs and keys"),
          listen: str = typer.Option("127.0.0.1:50051", help="HOST:PORT for gRPC"),
          insecure_loopback_dev: bool = typer.Option(False, "--insecure-loopback-dev",
                                                     help="plaintext gRPC (loopback development only)"),
          max_workers: int = typer.Option(32, help="threads for the store/blob work of device calls (an open "
                                                   "watch stream holds none)"),
          max_streams: int = typer.Option(20000, help="open streams in all (each connected agent holds one)"),
          streams_per_peer: int = typer.Option(0, help="open streams per peer address (0: 3/4 of --max-streams)"),
          http: str = typer.Option("", help="dashboard + /metrics on PORT (loopback) or HOST:PORT; off if empty"),
          timestamp_expiry: float = typer.Option(86400, help="seconds a signed timestamp stays valid"),
          resign_interval: float = typer.Option(
              -1, help="seconds between checks that re-sign expiring metadata and pick up new roots "
                       "(default: min(5, expiry/4); 0 disables, e.g. to test freeze defences)"),
          pipeline_jobs: int = typer.Option(1, help="pipelines run at once (each stage in a worker process)"),
          allow_keyless_enrollment: bool = typer.Option(
              False, "--allow-keyless-enrollment",
              help="let devices enroll without a key pair (their bearer token alone then authenticates them; "
                   "development only)"),
          state: str = typer.Option("", help="state database: a SQLite file or postgresql://USER@HOST:PORT/DB "
                                             "(default: DATA_DIR/control_plane.db)"),
          blobs: str = typer.Option("", help="blob store: a folder or s3://BUCKET/PREFIX (default: DATA_DIR/blobs)"),
          s3_endpoint: str = typer.Option("", help="URL of the S3-compatible store for --blobs s3://... "
                                                   "(credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"),
          gc_freeze: float = typer.Option(1.0, help="seconds between moving long-lived objects out of the garbage "
                                                    "collector's scans (0: off; docs/ARCHITECTURE.md)")):
    """Serve the fleet, artifact, telemetry and admin APIs over gRPC (and the dashboard with --http)."""
    import datetime as dt

    from control_plane.server import ControlPlaneConfig, serve_forever
    from control_plane.trust_repo import Expiry
    from slmops.errors import ConfigError, StorageUnavailable

    setup_logging()
    try:
        expiry = Expiry(timestamp=dt.timedelta(seconds=timestamp_expiry))
        # absolute: pipeline workers run in other working folders and find their specs under it
        serve_forever(ControlPlaneConfig(data_dir=data_dir.resolve(), listen=listen, http=http, expiry=expiry,
                                         insecure_loopback_dev=insecure_loopback_dev, max_workers=max_workers,
                                         max_streams=max_streams, streams_per_peer=streams_per_peer,
                                         pipeline_jobs=pipeline_jobs, allow_keyless_enrollment=allow_keyless_enrollment,
                                         state=state, blobs=blobs, s3_endpoint=s3_endpoint, gc_freeze_s=gc_freeze,
                                         refresh_s=resign_interval if resign_interval >= 0
                                         else min(5.0, max(0.2, timestamp_expiry / 4))))
    except (ConfigError, StorageUnavailable) as e:
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


@cp_app.command("copy-identity")
def copy_identity(src: pathlib.Path = typer.Argument(..., help="data folder of a control plane that has started"),
                  dest: pathlib.Path = typer.Argument(..., help="data folder of the new replica (made if missing)")):
    """Give a new replica's data folder the identity of an existing one (its trust root and keys, its TLS CA):
    replicas over one database must share it. Run it again after `slmops keys rotate`."""
    from control_plane.identity import copy
    from slmops.errors import ConfigError

    try:
        copied = copy(src, dest)
    except (ConfigError, OSError) as e:
        fail(str(e))
    console.print(f"copied {len(copied)} identity files from {src} to {dest} (private keys 0600)")


@cp_app.command("wait")
def wait(control_plane: str = typer.Option("127.0.0.1:50051", help="control plane HOST:PORT"),
         cp_data_dir: Optional[pathlib.Path] = typer.Option(
             None, help="also wait for its admin-token and keys/ca.pem (written at first start)"),
         timeout: float = typer.Option(60.0, help="seconds before giving up (exit 1)")):
    """Wait until a control plane answers its health check (for scripts that just started one)."""
    import os
    import time

    from cli.common import admin_ca
    from control_plane.admin_client import wait_healthy

    deadline = time.monotonic() + timeout
    if cp_data_dir is not None:
        need = [cp_data_dir / "admin-token"]
        if os.environ.get("SLMOPS_INSECURE_LOOPBACK_DEV") != "1" and not os.environ.get("SLMOPS_CA_CERT"):
            need.append(cp_data_dir / "keys" / "ca.pem")
        while not all(p.exists() for p in need):
            if time.monotonic() > deadline:
                fail(f"no {' / '.join(str(p) for p in need if not p.exists())} after {timeout:.0f} s: is the "
                     f"control plane running with --data-dir {cp_data_dir}?")
            time.sleep(0.2)
    try:
        wait_healthy(control_plane, max(0.5, deadline - time.monotonic()), admin_ca(control_plane, cp_data_dir))
    except TimeoutError as e:
        fail(str(e))
    console.print(f"control plane at {control_plane} is serving")
