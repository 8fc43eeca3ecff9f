"""`slmops tokens create|list|revoke` (enrollment) and `tokens api|api-list|api-revoke` (admin API roles).
A secret is printed once, on stdout, when it is made; lists show only its public id."""
from __future__ import annotations

import pathlib
from typing import List, Optional

import typer

from cli.common import (CP_DATA_OPT, CP_OPT, JSON_OPT, TOKEN_OPT, admin, call, console, emit, fail, labels,
                        labels_text, when)

tokens_app = typer.Typer(no_args_is_help=True, help="Enrollment tokens and API tokens.")
ROLES = ("viewer", "operator", "admin")


def public_id(given: str, kind: str) -> str:
    """A token's public id from its id or from the secret itself (hashed here; the secret is never sent)."""
    from control_plane.store import api_token_id, enroll_token_id, token_hash

    if given.startswith("slm_"):
        return (enroll_token_id if kind == "enroll" else api_token_id)(token_hash(given.strip()))
    return given.strip()


def _state(t) -> str:
    import time

    if t.revoked:
        return "revoked"
    if t.expires_unix_ms and t.expires_unix_ms < time.time() * 1000:
        return "expired"
    return "used up" if t.uses_left <= 0 else "active"


@tokens_app.command("create")
def create(uses: int = typer.Option(1, help="how many devices may enroll with it"),
           ttl: int = typer.Option(86400, help="seconds until it expires"),
           label: List[str] = typer.Option([], "--label", help="KEY=VALUE given to devices enrolling with it"),
           control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
           cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT):
    """Create an enrollment token: the secret on stdout, its id (for list/revoke) on stderr."""
    if uses < 1:
        fail("--uses must be at least 1")
    if ttl < 1:
        fail("--ttl must be at least 1 second")
    given = labels(label)
    c = admin(control_plane, admin_token, cp_data_dir)
    t = call(lambda: c.enroll_token(uses, ttl, given))
    console.print(f"enrollment token {t.token_id}: {t.uses} use(s), expires {when(t.expires_unix_ms)}"
                  + (f", labels {labels_text(given)}" if given else ""), soft_wrap=True)
    print(t.token)


@tokens_app.command("list")
def list_(as_json: bool = JSON_OPT, control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
          cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT):
    """Enrollment tokens (ids, never the secrets): uses left, expiry, labels, state."""
    c = admin(control_plane, admin_token, cp_data_dir)
    emit(call(c.enroll_tokens), [("id", lambda t: t.token_id), ("state", _state),
                                 ("uses", lambda t: f"{t.uses_left}/{t.uses}"),
                                 ("expires", lambda t: when(t.expires_unix_ms, "%m-%d %H:%M")),
                                 ("labels", lambda t: labels_text(t.labels)[:30])], as_json)


@tokens_app.command("revoke")
def revoke(token_id: str = typer.Argument(..., help="its id (tok_…, from `tokens create` or `tokens list`) or the "
                                                    "token itself"),
           control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
           cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT):
    """Revoke an enrollment token: no device can enroll with it from now on."""
    c = admin(control_plane, admin_token, cp_data_dir)
    t = call(lambda: c.revoke_enroll_token(public_id(token_id, "enroll")))
    console.print(f"revoked enrollment token {t.token_id}")


@tokens_app.command("api")
def api(role: str = typer.Option(..., help="viewer, operator or admin"),
        name: str = typer.Option(..., help="who holds it (shown in the audit log)"),
        control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
        cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT):
    """Create an API token for the admin API, CLI and dashboard (secret on stdout; needs role admin)."""
    if role not in ROLES:
        fail(f"--role {role!r}: expected one of {', '.join(ROLES)}")
    if not name.strip():
        fail("--name must name who holds the token")
    c = admin(control_plane, admin_token, cp_data_dir)
    t = call(lambda: c.api_token(role, name))
    console.print(f"API token {t.token_id}: role {t.role}, held by {t.name}", soft_wrap=True)
    print(t.token)


@tokens_app.command("api-list")
def api_list(as_json: bool = JSON_OPT, control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
             cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT):
    """API tokens (ids, never the secrets): role, holder, state."""
    c = admin(control_plane, admin_token, cp_data_dir)
    emit(call(c.api_tokens), [("id", lambda t: t.token_id), ("role", lambda t: t.role),
                              ("name", lambda t: t.name[:24]), ("state", lambda t: "revoked" if t.revoked
                                                                 else "active"),
                              ("created", lambda t: when(t.created_unix_ms, "%m-%d %H:%M"))], as_json)


@tokens_app.command("api-revoke")
def api_revoke(token_id: str = typer.Argument(..., help="its id (api_…, from `tokens api` or `tokens api-list`) "
                                                        "or the token itself"),
               control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
               cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT):
    """Revoke an API token: refused from the next call on (the last admin token cannot be revoked)."""
    c = admin(control_plane, admin_token, cp_data_dir)
    t = call(lambda: c.revoke_api_token(public_id(token_id, "api")))
    console.print(f"revoked API token {t.token_id} ({t.role}, {t.name})")
