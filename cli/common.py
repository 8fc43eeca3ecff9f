"""What every command group shares: the consoles, one way to fail, the admin connection and its options,
and the small parsers (labels, waves, --since, NAME@VERSION) and output helpers (--json or an 80-column table)."""
from __future__ import annotations

import json
import logging
import os
import pathlib
import sys
import time
from typing import Callable, Iterable, List, Optional

import typer
from rich.console import Console
from rich.table import Table

# Messages go to stderr; what scripts read (tokens, ids, --json) goes to stdout.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)

CP_OPT = typer.Option(os.environ.get("SLMOPS_CONTROL_PLANE", "127.0.0.1:50051"), "--control-plane",
                      help="control plane address [env SLMOPS_CONTROL_PLANE]")
TOKEN_OPT = typer.Option(None, "--admin-token", help="admin token [env SLMOPS_ADMIN_TOKEN]")
CP_DATA_OPT = typer.Option(None, "--cp-data-dir", help="read the admin token (and CA) from this control plane "
                                                        "data dir")
JSON_OPT = typer.Option(False, "--json", help="print JSON (one array) for scripts instead of a table")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def fail(message: str, code: int = 1):
    """One line naming what was wrong, exit non-zero; never a traceback."""
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True, markup=True, highlight=False)
    raise typer.Exit(code)


STATE_OPT_HELP = ("the control plane's --state when it is not the data folder's SQLite file "
                  "(postgresql://USER@HOST:PORT/DB)")


def cp_store(cp_data_dir: pathlib.Path, state: str = ""):
    """The state of the control plane whose data folder is `cp_data_dir` (its SQLite file), or `state`
    (its --state URL), for commands that read it directly; a clear error when it is not there."""
    from control_plane.store import Store
    from slmops.errors import ConfigError, StorageUnavailable

    db = cp_data_dir / "control_plane.db"
    if not state and not db.is_file():
        fail(f"no control plane data at {db} (give the folder `control-plane serve --data-dir` uses, or its "
             "--state)")
    try:
        return Store(state or db)
    except (ConfigError, StorageUnavailable) as e:
        fail(str(e))


def is_loopback(address: str) -> bool:
    """HOST:PORT (or [V6]:PORT) names this machine: localhost or an address in 127.0.0.0/8 or ::1."""
    import ipaddress

    host = address.strip()
    if host.startswith("["):
        host = host[1:host.find("]")]
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def admin(address: str, token: Optional[str], cp_data_dir: Optional[pathlib.Path]):
    """An AdminClient for the control plane at `address`, TLS pinned to its CA unless plaintext is allowed."""
    from control_plane.admin_client import AdminClient

    token = token or os.environ.get("SLMOPS_ADMIN_TOKEN")
    if not token and cp_data_dir:
        p = pathlib.Path(cp_data_dir) / "admin-token"
        if not p.exists():
            fail(f"no admin token at {p}")
        token = p.read_text().strip()
    if not token:
        fail("an admin token is needed: --admin-token, SLMOPS_ADMIN_TOKEN or --cp-data-dir")
    return AdminClient(address, token, admin_ca(address, cp_data_dir))


def admin_ca(address: str, cp_data_dir: Optional[pathlib.Path]) -> Optional[bytes]:
    """The control plane CA to pin: SLMOPS_CA_CERT, else DATA_DIR/keys/ca.pem; None (plaintext) only with
    SLMOPS_INSECURE_LOOPBACK_DEV=1 and a loopback address (the token never travels in the clear off the host)."""
    if os.environ.get("SLMOPS_INSECURE_LOOPBACK_DEV") == "1":
        if not is_loopback(address):
            fail(f"SLMOPS_INSECURE_LOOPBACK_DEV=1 sends the admin token in plaintext, so it is refused for "
                 f"{address!r}: only loopback addresses (127.0.0.1, localhost, [::1]) may use it")
        return None
    path = os.environ.get("SLMOPS_CA_CERT") or (pathlib.Path(cp_data_dir) / "keys" / "ca.pem" if cp_data_dir else None)
    if not path or not pathlib.Path(path).exists():
        fail("TLS needs the control plane's CA: SLMOPS_CA_CERT=DATA_DIR/keys/ca.pem or --cp-data-dir "
             "(plaintext on loopback only with SLMOPS_INSECURE_LOOPBACK_DEV=1)")
    return pathlib.Path(path).read_bytes()


def call(fn: Callable):
    """Runs one Admin call; a refusal becomes one line naming it (the control plane audits it)."""
    from control_plane.admin_client import AdminError

    try:
        return fn()
    except AdminError as e:
        if e.code.name == "UNAVAILABLE":
            fail(f"control plane unreachable: {e.details}")
        fail(f"control plane refused: {e}")


def labels(pairs: List[str], what: str = "label") -> dict:
    out = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or not k.strip():
            fail(f"{what} {p!r} must be KEY=VALUE")
        out[k.strip()] = v.strip()
    return out


def wave(text: str) -> dict:
    try:
        value = {"percent": float(text[:-1])} if text.endswith("%") else {"devices": int(text)}
    except ValueError:
        fail(f"wave {text!r} must be N (devices) or N% (of the matching fleet)")
    if next(iter(value.values())) <= 0:
        fail(f"wave {text!r} must be more than 0")
    return value


def model_ref(text: str, what: str = "model") -> tuple[str, str]:
    name, _, version = text.partition("@")
    if not name or not version:
        fail(f"{what} {text!r} must be NAME@VERSION")
    return name, version


def since_ms(since: str) -> int:
    from slmops.since import parse_since

    try:
        return parse_since(since, int(time.time() * 1000))
    except ValueError as e:
        fail(str(e))


def ref(m) -> str:
    return f"{m.name}@{m.version}" if m.name else "-"


def when(ms: int, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return time.strftime(fmt, time.localtime(ms / 1000)) if ms else "-"


def ago(ms: int) -> str:
    if not ms:
        return "never"
    s = max(0.0, time.time() - ms / 1000)
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.0f}h ago"


def labels_text(d) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(d.items())) or "-"


def to_dict(msg) -> dict:
    """A protobuf message as the JSON the --json flags print (field names as in the .proto)."""
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def emit(rows: Iterable, columns: list[tuple[str, Callable]], as_json: bool, title: str | None = None) -> None:
    """--json: a JSON array of the full messages on stdout; else a table of the given (header, cell) columns,
    chosen to stay readable at 80 columns (full values are in the matching `show` command)."""
    rows = list(rows)
    if as_json:
        print(json.dumps([to_dict(r) for r in rows], indent=1))
        return
    t = Table(*[h for h, _ in columns], title=title)
    for r in rows:
        t.add_row(*[str(f(r)) for _, f in columns])
    Console().print(t)
    if not rows:
        console.print("(none)")
