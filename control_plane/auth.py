"""Who is calling, what they may do, and the audit trail of it.

Admins: bearer API tokens with a role (viewer < operator < admin); METHOD_ROLES names the least role each
Admin RPC needs (an RPC not listed needs admin). AuditInterceptor checks it before any Admin handler runs
and writes one audit row per Admin call (who, what, when, result), refusals included.

Devices: a bearer device token plus an Ed25519 signature, made with the key pair the device made and sent at
enrollment, over the request itself: the method, the sha256 of the request body, a timestamp and a nonce
(`signed_payload`). The interceptor checks it before the handler runs (DeviceAuth); a nonce seen before within
the timestamp window is a replay (ReplayCache). Enrollment without a key is refused unless the control plane
allows it (allow_keyless_enrollment); a device row without a key (only such an enrollment, or the store itself,
makes one) is authenticated by its bearer token alone. A device may act only as itself. Refused device calls
and every enrollment are audited too.

The state database unreachable (StorageUnavailable, from the check, the handler or the audit row) is UNAVAILABLE
with the message naming the database, for every service: clients retry it, and nothing is half-answered. The
audit row of such a call is lost with the database it would have gone to.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import heapq
import threading
import time

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf import text_format

from control_plane.store import Store
from slmops.errors import StorageUnavailable

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
SIG_HEADER, TS_HEADER, NONCE_HEADER = "x-slmops-device-sig", "x-slmops-device-ts", "x-slmops-device-nonce"
SIG_VERSION = "slmops-device-v2"
MAX_SIG_SKEW_MS = 5 * 60 * 1000
NONCE_HEX = 32                       # 16 random bytes
MAX_NONCES_PER_DEVICE = 50_000       # signed calls one device may make within one window (5 min)
ENROLL = "/slmops.v1.Fleet/Enroll"
_DEVICE: contextvars.ContextVar[dict | None] = contextvars.ContextVar("slmops_device", default=None)


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


# ---- device proof of possession (the agent's side is edge_agent/device_identity.py DeviceSigner) ---------
def body_sha256(request) -> str:
    """The hash a device signs for a request message: its deterministic serialization."""
    return hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()


def signed_payload(method: str, ts_ms: int, nonce: str, token: str, body_sha: str) -> bytes:
    """What a device signs for one call (must match edge_agent/device_identity.py signed_payload)."""
    return "\n".join((SIG_VERSION, method, str(ts_ms), nonce, hashlib.sha256(token.encode()).hexdigest(),
                      body_sha)).encode()


def check_device_signature(public_key_hex: str, token: str, method: str, body_sha: str, ts: str, nonce: str,
                           sig_hex: str, now_ms: int) -> str | None:
    """None when the signature binds this call; otherwise what was wrong (pure)."""
    if not ts or not sig_hex or not nonce:
        return f"this device signs its calls: {SIG_HEADER}, {TS_HEADER} and {NONCE_HEADER} are required"
    if not ts.isdigit() or abs(now_ms - int(ts)) > MAX_SIG_SKEW_MS:
        return f"device signature timestamp {ts[:20]!r} is not within {MAX_SIG_SKEW_MS // 1000} s of the server clock"
    if len(nonce) != NONCE_HEX or any(c not in "0123456789abcdef" for c in nonce):
        return f"device signature nonce must be {NONCE_HEX} lowercase hex characters"
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex)).verify(
            bytes.fromhex(sig_hex), signed_payload(method, int(ts), nonce, token, body_sha))
    except (InvalidSignature, ValueError):
        return ("device signature does not verify with the key this device enrolled with (it covers the method, "
                "the request body, the timestamp and the nonce)")
    return None


class ReplayCache:
    """Nonces of accepted device signatures, kept until their timestamp leaves the window (after that the
    timestamp check refuses them anyway). A nonce seen twice is a replay. Bounded per device."""

    def __init__(self, window_ms: int = MAX_SIG_SKEW_MS, per_device: int = MAX_NONCES_PER_DEVICE):
        self.window_ms, self.per_device = window_ms, per_device
        self._lock = threading.Lock()
        self._seen: dict[str, dict[str, int]] = {}        # device -> nonce -> expiry
        self._expiry: dict[str, list[tuple[int, str]]] = {}
        self._admitted = 0

    def admit(self, device_id: str, nonce: str, ts_ms: int, now_ms: int) -> tuple[grpc.StatusCode, str] | None:
        """None (and the nonce remembered) for a fresh nonce; otherwise the refusal."""
        with self._lock:
            seen, heap = self._seen.setdefault(device_id, {}), self._expiry.setdefault(device_id, [])
            while heap and heap[0][0] < now_ms:
                seen.pop(heapq.heappop(heap)[1], None)
            if nonce in seen:
                return grpc.StatusCode.UNAUTHENTICATED, "replayed device signature: this nonce was already used"
            if len(seen) >= self.per_device:
                return grpc.StatusCode.RESOURCE_EXHAUSTED, (f"more than {self.per_device} signed calls from this "
                                                            f"device within {self.window_ms // 1000} s; slow down")
            seen[nonce] = ts_ms + self.window_ms
            heapq.heappush(heap, (ts_ms + self.window_ms, nonce))
            self._admitted += 1
            if self._admitted % 4096 == 0:   # devices that went quiet (or were deleted) do not keep their nonces
                self._sweep(now_ms)
            return None

    def _sweep(self, now_ms: int) -> None:
        for device_id in list(self._expiry):
            heap, seen = self._expiry[device_id], self._seen[device_id]
            while heap and heap[0][0] < now_ms:
                seen.pop(heapq.heappop(heap)[1], None)
            if not heap:
                del self._expiry[device_id], self._seen[device_id]

    def devices(self) -> int:
        with self._lock:
            return len(self._seen)


class DeviceAuth:
    """Authenticates one device call from its metadata and request; used by the interceptor."""

    def __init__(self, store: Store, replay: ReplayCache | None = None, clock=time.time):
        self.store, self.clock = store, clock
        self.replay = replay or ReplayCache()

    def authenticate(self, method: str, request, metadata) -> tuple[dict | None, grpc.StatusCode | None, str]:
        """(device row, None, "") or (None, refusal code, why)."""
        md = {k: v for k, v in metadata or () if isinstance(v, str)}
        token = _bearer(metadata)
        dev = self.store.device_for_token(token) if token else None
        if dev is None:
            return None, grpc.StatusCode.UNAUTHENTICATED, "missing or unknown device token"
        if not dev.get("public_key"):
            return dev, None, ""      # enrolled key-less (an explicit opt-in): its bearer token is all it has
        if request is None:
            return None, grpc.StatusCode.UNIMPLEMENTED, "device calls with a request stream are not signed"
        now = int(self.clock() * 1000)
        ts, nonce = md.get(TS_HEADER, ""), md.get(NONCE_HEADER, "")
        why = check_device_signature(dev["public_key"], token, method, body_sha256(request), ts, nonce,
                                     md.get(SIG_HEADER, ""), now)
        if why:
            return None, grpc.StatusCode.UNAUTHENTICATED, why
        refused = self.replay.admit(dev["device_id"], nonce, int(ts), now)
        if refused:
            return None, *refused
        return dev, None, ""


async def require_device(context, device_id: str | None = None) -> dict:
    """The calling device (authenticated by the interceptor's DeviceAuth), or abort. A device may only act
    as itself."""
    dev = current_device()
    if dev is None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "device call not authenticated")
    if device_id and device_id != dev["device_id"]:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                            f"device {dev['device_id']} may not act for device {device_id}")
    return dev


def current_device() -> dict | None:
    """The device the auth interceptor authenticated for the call running in this task (None outside one)."""
    return _DEVICE.get()


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
    if request.ByteSize() > 16 << 10:   # a large body (a telemetry batch): not worth formatting for 300 characters
        return f"({type(request).__name__} of {request.ByteSize()} bytes)"
    msg = type(request)()
    msg.CopyFrom(request)
    for f in msg.DESCRIPTOR.fields:
        if ("token" in f.name and f.name != "token_id") or f.name in ("manifest_json", "data", "device_public_key"):
            msg.ClearField(f.name)
    return text_format.MessageToString(msg, as_one_line=True)[:300]


class SyncCallContext:
    """The context grpc.aio hands a plain (non-async) handler, which the Admin service's handlers are (they run on
    the server's admin thread pool), plus what they and the audit need from the sync server's context: the
    status code and details after an abort, and is_active()."""

    def __init__(self, context):
        self._context, self._code, self._details = context, None, ""
        self._done = threading.Event()
        self.on_abort = None          # called with (code, details) before the status is sent
        context.add_callback(self._done.set)

    def abort(self, code, details: str = ""):
        self._code, self._details = code, details
        if self.on_abort:
            self.on_abort(code, details)
        self._context.abort(code, details)

    def set_code(self, code) -> None:
        self._code = code
        self._context.set_code(code)

    def set_details(self, details: str) -> None:
        self._details = details
        self._context.set_details(details)

    def code(self):
        return self._code

    def details(self) -> str:
        return self._details

    def is_active(self) -> bool:
        return not self._done.is_set()

    def __getattr__(self, name):
        return getattr(self._context, name)


class AsyncCallContext:
    """grpc.aio's servicer context, with a coroutine awaited before an abort's status is sent."""

    def __init__(self, context, on_abort):
        self._context, self._on_abort = context, on_abort

    async def abort(self, code, details: str = ""):
        await self._on_abort(code, details)
        await self._context.abort(code, details)

    def __getattr__(self, name):
        return getattr(self._context, name)


class AuditInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates and audits. Device services are coroutines: their checks and audit rows go through the
    blocking-work pool (`offload`, control_plane/offload.py). Admin handlers are plain functions on the admin
    thread pool: their wrappers are plain too."""

    def __init__(self, store: Store, offload, devices: DeviceAuth | None = None):
        self.store = store
        self.offload = offload
        self.devices = devices or DeviceAuth(store)

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        method = details.method
        if handler is None:
            return None
        if method.startswith(ADMIN_SERVICE):
            return self._wrap_admin(handler, method, metadata=details.invocation_metadata)
        if method.startswith(DEVICE_SERVICES):
            return self._wrap_device(handler, method, metadata=details.invocation_metadata)
        return handler

    @staticmethod
    def _kind(handler) -> str:
        return ("unary_unary" if not handler.request_streaming and not handler.response_streaming else
                "unary_stream" if not handler.request_streaming else
                "stream_unary" if not handler.response_streaming else "stream_stream")

    def _wrap_device(self, handler, method: str, metadata):
        action = method.rsplit("/", 1)[1]
        kind = self._kind(handler)
        behavior = getattr(handler, kind)
        offload, store = self.offload, self.store
        one_request = not handler.request_streaming

        async def check(request, context) -> contextvars.Token | None:
            if method == ENROLL:
                return None
            dev, code, why = await offload(self.devices.authenticate, method, request, context.invocation_metadata())
            if dev is None:
                who = await offload(self._who, metadata, False)
                await offload(store.audit, who["name"], "device", action, describe(request), code.name, why)
                await context.abort(code, why)
            return _DEVICE.set(dev)

        async def record(request, code, detail, error: BaseException | None) -> None:
            if code is None and error is not None and not isinstance(error, (asyncio.CancelledError,
                                                                            GeneratorExit)):
                code = grpc.StatusCode.UNKNOWN
            code = code or grpc.StatusCode.OK
            if code not in REFUSALS and action != "Enroll":
                return
            detail = detail or (str(error) if error else "")
            who = await offload(self._who, metadata, False)
            name = who["name"]
            if action == "Enroll" and request is not None:
                name = f"device-name:{request.device_name[:100]}"
            await offload(store.audit, name, who["role"], action, describe(request), code.name,
                          detail if isinstance(detail, str) else detail.decode(errors="replace"))

        def audited(req, context):
            """The context the handler sees: an abort is recorded before its status is sent, so a client that
            reads the audit trail right after a refusal finds the row."""
            done: list = []

            async def on_abort(code, details) -> None:
                done.append(code)
                await record(req, code, details, None)
            return AsyncCallContext(context, on_abort), done

        @contextlib.asynccontextmanager
        async def guarded(request, context, streaming: bool):
            """Checks the caller, hands the handler its audited context, records the outcome unless an abort
            already did (a stream the client left is not an outcome: nothing to record)."""
            req = request if one_request else None
            token = await check(req, context)
            ctx, done = audited(req, context)
            err = None
            try:
                yield ctx
            except BaseException as e:
                err = e
                raise
            finally:
                if token is not None:
                    _DEVICE.reset(token)
                left = streaming and isinstance(err, (GeneratorExit, asyncio.CancelledError))
                if not done and not left:
                    await record(req, context.code(), context.details(), err)

        if not handler.response_streaming:
            async def wrapped(request, context):
                try:
                    async with guarded(request, context, False) as ctx:
                        return await behavior(request, ctx)
                except StorageUnavailable as e:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        else:
            async def wrapped(request, context):
                try:
                    async with guarded(request, context, True) as ctx:
                        async for msg in behavior(request, ctx):
                            yield msg
                except StorageUnavailable as e:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        return handler._replace(**{kind: wrapped})

    def _wrap_admin(self, handler, method: str, metadata):
        action = method.rsplit("/", 1)[1]
        kind = self._kind(handler)
        behavior = getattr(handler, kind)
        cache: dict = {}

        def caller() -> dict:  # looked up once
            if not cache:
                cache.update(self._who(metadata, True))
            return cache

        def check(context):
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

        def record(request, code, detail, error: BaseException | None):
            if code is None and error is not None:
                code = grpc.StatusCode.UNKNOWN
            code = code or grpc.StatusCode.OK
            detail = detail or (str(error) if error else "")
            who = caller()
            self.store.audit(who["name"], who["role"], action, describe(request), code.name,
                             detail if isinstance(detail, str) else detail.decode(errors="replace"))

        def audited(request, context) -> tuple[SyncCallContext, list]:
            """An abort is recorded before its status is sent (grpc.aio sends it from the event loop while
            this thread unwinds), so a client that reads the audit trail right after a refusal finds the row."""
            done: list = []
            ctx = SyncCallContext(context)
            check(ctx)

            def on_abort(code, details) -> None:
                done.append(code)
                record(request, code, details, None)
            ctx.on_abort = on_abort
            return ctx, done

        one_request = not handler.request_streaming
        if not handler.response_streaming:
            def call(request, context):
                req = request if one_request else None
                context, done = audited(req, context)
                err = None
                try:
                    return behavior(request, context)
                except BaseException as e:
                    err = e
                    raise
                finally:
                    if not done:
                        record(req, context.code(), context.details(), err)

            def wrapped(request, context):
                try:
                    return call(request, context)
                except StorageUnavailable as e:
                    context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        else:
            def call(request, context):
                req = request if one_request else None
                context, done = audited(req, context)
                err = None
                try:
                    yield from behavior(request, context)
                except BaseException as e:
                    err = e
                    raise
                finally:
                    if not done and not isinstance(err, GeneratorExit):
                        record(req, context.code(), context.details(), err)

            def wrapped(request, context):
                try:
                    yield from call(request, context)
                except StorageUnavailable as e:
                    context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        return handler._replace(**{kind: wrapped})

    def _who(self, metadata, admin: bool) -> dict:
        token = _bearer(metadata)
        if admin:
            p = self.store.admin_principal(token) if token else None
            return p or {"name": "anonymous", "role": ""}
        dev = self.store.device_for_token(token) if token else None
        return {"name": f"device:{dev['device_id']}" if dev else "unknown-device", "role": "device"}
