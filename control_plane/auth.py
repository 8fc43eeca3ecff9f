"""Who is calling, what they may do, and the audit trail of it.

Admins: bearer API tokens with a role (viewer < operator < admin); METHOD_ROLES names the least role each
Admin RPC needs (an RPC not listed needs admin). AuditInterceptor checks it before any Admin handler runs
and writes one audit row per Admin call (who, what, when, result), refusals included.

Devices: a bearer device token, plus (for devices that enrolled with a key pair made on the device) an
Ed25519 signature over a timestamp and the token, checked against the public key recorded at enrollment.
A device may act only as itself. Refused device calls and every enrollment are audited too.
"""
from __future__ import annotations

import hashlib
import time

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf import text_format

from control_plane.store import Store

ROLES = ("viewer", "operator", "admin")
VIEWER_RPCS = ("ListModels", "ListDevices", "QueryTelemetry", "QueryRollups", "ListEvents", "GetRollout",
               "ListRollouts", "GetDevice", "SelectDevices", "ListPipelines", "GetPipeline", "PipelineLogs")
OPERATOR_RPCS = ("UploadBlob", "MissingBlobs", "PublishModel", "SetDesiredVersion", "CreateEnrollToken",
                 "CreateRollout", "PauseRollout", "ResumeRollout", "AbortRollout", "PinDevice", "SetDeviceLabels",
                 "SubmitPipeline", "CancelPipeline", "DeleteDevice")
ADMIN_RPCS = ("CreateApiToken", "ListAudit", "ListApiTokens", "RevokeApiToken", "ListEnrollTokens",
              "RevokeEnrollToken")
METHOD_ROLES = {**{m: "viewer" for m in VIEWER_RPCS}, **{m: "operator" for m in OPERATOR_RPCS},
                **{m: "admin" for m in ADMIN_RPCS}}
ADMIN_SERVICE = "/slmops.v1.Admin/"
DEVICE_SERVICES = ("/slmops.v1.Fleet/", "/slmops.v1.Artifacts/", "/slmops.v1.Telemetry/")
REFUSALS = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
SIG_HEADER, TS_HEADER = "x-slmops-device-sig", "x-slmops-device-ts"
MAX_SIG_SKEW_MS = 5 * 60 * 1000


def role_at_least(role: str, needed: str) -> bool:
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)


def bearer(context) -> str | None:
    return _bearer(context.invocation_metadata())


def _bearer(metadata) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and value.startswith("Bearer "):
            return value[len("Bearer "):]
    return None


def _header(context, name: str) -> str:
    return next((v for k, v in context.invocation_metadata() if k == name), "")


# ---- device proof of possession (the agent's side is edge_agent/control_client.py DeviceSigner) ----------
def signed_payload(ts_ms: int, token: str) -> bytes:
    return f"slmops-device-v1\n{ts_ms}\n{hashlib.sha256(token.encode()).hexdigest()}".encode()


def check_device_signature(public_key_hex: str, token: str, ts: str, sig_hex: str, now_ms: int) -> str | None:
    """None when the signature is good; otherwise what was wrong (pure)."""
    if not ts or not sig_hex:
        return f"this device signs its calls: {SIG_HEADER} and {TS_HEADER} are required"
    if not ts.isdigit() or abs(now_ms - int(ts)) > MAX_SIG_SKEW_MS:
        return f"device signature timestamp {ts!r} is not within {MAX_SIG_SKEW_MS // 1000} s of the server clock"
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex)).verify(
            bytes.fromhex(sig_hex), signed_payload(int(ts), token))
    except (InvalidSignature, ValueError):
        return "device signature does not verify with the key this device enrolled with"
    return None


def require_device(store: Store, context, device_id: str | None = None) -> dict:
    """The calling device, or abort UNAUTHENTICATED/PERMISSION_DENIED. A device may only act as itself."""
    token = bearer(context)
    dev = store.device_for_token(token) if token else None
    if dev is None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown device token")
    if dev.get("public_key"):
        why = check_device_signature(dev["public_key"], token, _header(context, TS_HEADER),
                                     _header(context, SIG_HEADER), int(time.time() * 1000))
        if why:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, why)
    if device_id and device_id != dev["device_id"]:
        context.abort(grpc.StatusCode.PERMISSION_DENIED,
                      f"device {dev['device_id']} may not act for device {device_id}")
    return dev


def require_admin(store: Store, context) -> str:
    """The caller's role (the interceptor has already checked it against METHOD_ROLES)."""
    p = admin_principal(store, context)
    if p is None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown admin token")
    return p["role"]


def admin_principal(store: Store, context) -> dict | None:
    token = bearer(context)
    return store.admin_principal(token) if token else None


# ---- the interceptor -------------------------------------------------------------------------------------
def describe(request) -> str:
    """A one-line, secret-free description of a request for the audit log."""
    if request is None or not hasattr(request, "DESCRIPTOR"):
        return "(stream)"
    msg = type(request)()
    msg.CopyFrom(request)
    for f in msg.DESCRIPTOR.fields:
        if ("token" in f.name and f.name != "token_id") or f.name in ("manifest_json", "data", "device_public_key"):
            msg.ClearField(f.name)
    return text_format.MessageToString(msg, as_one_line=True)[:300]


class AuditInterceptor(grpc.ServerInterceptor):
    def __init__(self, store: Store):
        self.store = store

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        method = details.method
        if handler is None:
            return None
        if method.startswith(ADMIN_SERVICE):
            return self._wrap(handler, method, admin=True, metadata=details.invocation_metadata)
        if method.startswith(DEVICE_SERVICES):
            return self._wrap(handler, method, admin=False, metadata=details.invocation_metadata)
        return handler

    def _wrap(self, handler, method: str, admin: bool, metadata):
        action = method.rsplit("/", 1)[1]
        kind = ("unary_unary" if not handler.request_streaming and not handler.response_streaming else
                "unary_stream" if not handler.request_streaming else
                "stream_unary" if not handler.response_streaming else "stream_stream")
        behavior = getattr(handler, kind)
        cache: dict = {}

        def caller() -> dict:  # looked up once, and for device calls only when something is recorded
            if not cache:
                cache.update(self._who(metadata, admin))
            return cache

        def check(context):
            if not admin:
                return
            who = caller()
            if who["role"] == "":
                self.store.audit("anonymous", "", action, "", "UNAUTHENTICATED", "no or unknown admin token")
                context.abort(grpc.StatusCode.UNAUTHENTICATED,
                              "missing or unknown admin token: send 'authorization: Bearer <API token>'")
            need = METHOD_ROLES.get(action, "admin")
            if not role_at_least(who["role"], need):
                why = f"{action} needs role {need}; {who['name']} has role {who['role']}"
                self.store.audit(who["name"], who["role"], action, "", "PERMISSION_DENIED", why)
                context.abort(grpc.StatusCode.PERMISSION_DENIED, why)

        def record(request, context, error: BaseException | None):
            code = context.code() if hasattr(context, "code") else None
            if code is None and error is not None:
                code = grpc.StatusCode.UNKNOWN
            code = code or grpc.StatusCode.OK
            if not admin and code not in REFUSALS and action != "Enroll":
                return
            detail = context.details() or (str(error) if error else "")
            who = caller()
            name = who["name"]
            if action == "Enroll" and request is not None:
                name = f"device-name:{request.device_name}"
            self.store.audit(name, who["role"], action, describe(request), code.name,
                             detail if isinstance(detail, str) else detail.decode(errors="replace"))

        if kind in ("unary_unary", "stream_unary"):
            def wrapped(request, context):
                check(context)
                err = None
                try:
                    resp = behavior(request, context)
                    return resp
                except BaseException as e:
                    err = e
                    raise
                finally:
                    record(request if kind == "unary_unary" else None, context, err)
        else:
            def wrapped(request, context):
                check(context)
                err = None
                try:
                    yield from behavior(request, context)
                except BaseException as e:
                    err = e
                    raise
                finally:
                    if err is None or not isinstance(err, GeneratorExit):
                        record(request if kind == "unary_stream" else None, context, err)
        return handler._replace(**{kind: wrapped})

    def _who(self, metadata, admin: bool) -> dict:
        token = _bearer(metadata)
        if admin:
            p = self.store.admin_principal(token) if token else None
            return p or {"name": "anonymous", "role": ""}
        dev = self.store.device_for_token(token) if token else None
        return {"name": f"device:{dev['device_id']}" if dev else "unknown-device", "role": "device"}
