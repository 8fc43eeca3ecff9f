"""Admin RPCs of the fleet: rollouts, device labels/pins/selection, API tokens, the audit log. A mixin of
servicers.AdminServicer (it needs `self.store`); role checks and audit rows come from auth.AuditInterceptor.
Decoding into typed values and refusing bad input happen here; decisions stay in rollouts.py.
"""
from __future__ import annotations

import dataclasses

import grpc

from control_plane import auth, device_input, rollout_driver
from control_plane import rollouts as ro
from control_plane.store import LastAdminToken, Store, api_token_id, token_hash
from slmops.v1 import admin_pb2, common_pb2

GATE_FIELDS = {"min_success_ratio": "min_success_ratio", "max_failure_ratio": "max_failure_ratio",
               "max_error_rate": "max_error_rate", "min_requests": "min_requests",
               "max_p95_latency_ms": "max_p95_latency_ms", "min_soak_seconds": "min_soak_s",
               "install_timeout_seconds": "install_timeout_s", "min_golden_pass_ratio": "min_golden_pass_ratio",
               "min_feedback_score": "min_feedback_score"}


def _ref(r: ro.Ref | None) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(name=r.name, version=r.version) if r else common_pb2.ModelRef()


def _hardware_pb(hw: dict) -> common_pb2.Hardware | None:
    """Stored hardware facts as a message; facts out of bounds (stored before the limits) are left out."""
    try:
        return common_pb2.Hardware(**device_input.bounded_hardware(hw)) if hw else None
    except device_input.DeviceInputInvalid:
        return None


def device_pb(d: dict) -> admin_pb2.Device:
    """A device row as a message; never fails for one device's odd data (every text is clamped)."""
    d = device_input.clamp_row(d)
    labels = {str(k)[:63]: str(v)[:63] for k, v in list(device_input.json_object(d.get("labels")).items())[:64]}
    return admin_pb2.Device(
        device_id=d["device_id"], name=d["name"], state=d["state"], message=d["message"],
        current=common_pb2.ModelRef(name=d["current_name"], version=d["current_version"]),
        desired=common_pb2.ModelRef(name=d["desired_name"], version=d["desired_version"]),
        last_seen_unix_ms=d["last_seen_ms"] or 0, agent_version=d["agent_version"],
        hardware=_hardware_pb(device_input.json_object(d.get("hardware"))), labels=labels,
        pinned=common_pb2.ModelRef(name=(d.get("pin_name") or "")[:128], version=(d.get("pin_version") or "")[:128]))


MAX_LABELS = 64


def bad_labels(labels) -> str:
    """'' when there are at most 64 labels, every key 1-63 characters and every value at most 63; otherwise
    what is wrong."""
    if len(labels) > MAX_LABELS:
        return f"{len(labels)} labels; at most {MAX_LABELS}"
    bad = [k for k in labels if not k or len(k) > 63 or len(labels[k]) > 63]
    return f"label keys must be 1-63 characters and values at most 63: {bad[:3]}" if bad else ""


def enroll_token_pb(t: dict) -> admin_pb2.EnrollTokenInfo:
    return admin_pb2.EnrollTokenInfo(token_id=t["token_id"], uses_left=t["uses_left"], uses=t["uses"],
                                     expires_unix_ms=t["expires_ms"], created_unix_ms=t["created_ms"],
                                     labels=t["labels"], revoked=t["revoked"], created_by=t["created_by"])


def api_token_pb(t: dict) -> admin_pb2.ApiTokenInfo:
    return admin_pb2.ApiTokenInfo(token_id=t["token_id"], role=t["role"], name=t["name"],
                                  created_unix_ms=t["created_ms"], revoked=t["revoked"], created_by=t["created_by"])


def selector_from(msg: admin_pb2.Selector) -> ro.Selector:
    return ro.Selector(dict(msg.labels), tuple(msg.hardware_classes), msg.all_devices)


def spec_from(req: admin_pb2.CreateRolloutRequest) -> ro.RolloutSpec:
    """Raises rollouts.RolloutInvalid naming the bad field."""
    gate = ro.Gate(**{ours: getattr(req.gate, f) for f, ours in GATE_FIELDS.items() if req.gate.HasField(f)})
    canary = ro.Wave(req.canary.devices, req.canary.percent) if req.HasField("canary") else None
    waves = tuple(ro.Wave(w.devices, w.percent) for w in req.waves)
    return ro.RolloutSpec.strategy(req.strategy or "all", req.model.name, req.model.version,
                                   selector_from(req.selector), canary=canary, waves=waves,
                                   max_per_minute=req.max_devices_per_minute, gate=gate,
                                   variants=dict(req.variants))


def rollout_pb(r: ro.Rollout, row: dict | None = None) -> admin_pb2.Rollout:
    s, c = r.spec, r.counts()
    gate = admin_pb2.HealthGate(**{f: getattr(s.gate, ours) for f, ours in GATE_FIELDS.items()})
    return admin_pb2.Rollout(
        rollout_id=r.rollout_id, model=common_pb2.ModelRef(name=s.name, version=s.version),
        selector=admin_pb2.Selector(labels=dict(s.selector.labels), hardware_classes=s.selector.hardware_classes,
                                    all_devices=s.selector.all_devices),
        waves=[admin_pb2.Wave(devices=w.devices, percent=w.percent) for w in s.waves],
        max_devices_per_minute=s.max_per_minute, gate=gate, variants=dict(s.variants), status=r.status,
        wave=r.wave, reason=r.reason, created_unix_ms=r.created_ms,
        updated_unix_ms=(row or {}).get("updated_ms") or r.created_ms, created_by=(row or {}).get("created_by", ""),
        assigned=c["assigned"], succeeded=c["succeeded"], failed=c["failed"], pending=c["pending"],
        devices=[admin_pb2.RolloutDevice(
            device_id=a.device_id, target=_ref(a.target), previous=_ref(a.previous), wave=a.wave,
            outcome="failed" if a.failed_ms else "succeeded" if a.succeeded_ms else "pending", why=a.why)
            for a in r.assignments])


class FleetAdmin:
    store: Store

    # ---- rollouts ---------------------------------------------------------------------------------
    def CreateRollout(self, request, context):
        try:
            spec = spec_from(request)
        except ro.RolloutInvalid as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        for version in {spec.version, *spec.variants.values()}:
            if self.store.model(spec.name, version) is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"no published model {spec.name}@{version}")
        principal = auth.admin_principal(self.store, context) or {"name": "?"}
        try:
            r = rollout_driver.create(self.store, spec, principal["name"])
        except rollout_driver.RolloutRefused as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        return rollout_pb(r, self.store.rollout_row(r.rollout_id))

    def GetRollout(self, request, context):
        row = self.store.rollout_row(request.rollout_id)
        if row is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no rollout {request.rollout_id!r}")
        return rollout_pb(ro.from_json(row["state"]), row)

    def ListRollouts(self, request, context):
        return admin_pb2.RolloutList(rollouts=[rollout_pb(ro.from_json(row["state"]), row)
                                               for row in self.store.rollout_rows()])

    def _operator(self, request, context, event: str):
        who = (auth.admin_principal(self.store, context) or {"name": "?"})["name"]
        try:
            r = rollout_driver.change(self.store, request.rollout_id, lambda r: ro.operator_event(r, event, who))
        except ro.TransitionRefused as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"rollout {request.rollout_id}: {e}")
        except rollout_driver.RolloutContended as e:
            context.abort(grpc.StatusCode.ABORTED, str(e))
        if r is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no rollout {request.rollout_id!r}")
        self.store.rollouts_changed.set()
        return rollout_pb(r, self.store.rollout_row(r.rollout_id))

    def PauseRollout(self, request, context):
        return self._operator(request, context, ro.PAUSE)

    def ResumeRollout(self, request, context):
        return self._operator(request, context, ro.RESUME)

    def AbortRollout(self, request, context):
        return self._operator(request, context, ro.ABORT)

    # ---- devices ----------------------------------------------------------------------------------
    def _device(self, context, device_id: str) -> dict:
        d = self.store.device(device_id)
        if d is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no device {device_id!r}")
        return d

    def GetDevice(self, request, context):
        return device_pb(self._device(context, request.device_id))

    def PinDevice(self, request, context):
        self._device(context, request.device_id)
        name, version = request.model.name, request.model.version
        if name and self.store.model(name, version) is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no published model {name}@{version}")
        self.store.set_pin(request.device_id, name, version)
        self.store.rollouts_changed.set()
        return device_pb(self.store.device(request.device_id))

    def SetDeviceLabels(self, request, context):
        self._device(context, request.device_id)
        bad = bad_labels(request.labels)
        if bad:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, bad)
        self.store.set_labels(request.device_id, dict(request.labels))
        self.store.rollouts_changed.set()
        return device_pb(self.store.device(request.device_id))

    def DeleteDevice(self, request, context):
        """The device's row goes (its token with it); unfinished rollouts forget it rather than count it failed."""
        with self.store.rollouts_lock:
            row = self.store.delete_device(request.device_id)
            if row is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"no device {request.device_id!r}")
            for r_row in self.store.rollout_rows(rollout_driver.UNFINISHED):
                rollout_driver.change(self.store, r_row["rollout_id"], lambda r: dataclasses.replace(
                    r, assignments=tuple(a for a in r.assignments if a.device_id != request.device_id)))
        self.store.rollouts_changed.set()
        return device_pb(row)

    def SelectDevices(self, request, context):
        try:
            sel = selector_from(request)
        except ro.RolloutInvalid as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        views = rollout_driver.fleet(self.store)
        return admin_pb2.DeviceList(devices=[device_pb(d) for d in self.store.devices()
                                             if sel.matches(views[d["device_id"]])])

    # ---- API tokens and audit ---------------------------------------------------------------------
    def CreateApiToken(self, request, context):
        if request.role not in auth.ROLES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"role {request.role!r} is not one of {auth.ROLES}")
        if not request.name:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name is required (it identifies the holder in "
                                                            "the audit log)")
        who = (auth.admin_principal(self.store, context) or {"name": ""})["name"]
        token = self.store.create_api_token(request.role, request.name, created_by=who)
        return admin_pb2.ApiToken(token=token, role=request.role, name=request.name,
                                  token_id=api_token_id(token_hash(token)))

    def ListApiTokens(self, request, context):
        return admin_pb2.ApiTokenList(tokens=[api_token_pb(t) for t in self.store.api_tokens()])

    def RevokeApiToken(self, request, context):
        try:
            t = self.store.revoke_api_token(request.token_id)
        except LastAdminToken as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        if t is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no API token {request.token_id!r}")
        return api_token_pb(t)

    def ListEnrollTokens(self, request, context):
        return admin_pb2.EnrollTokenList(tokens=[enroll_token_pb(t) for t in self.store.enroll_tokens()])

    def RevokeEnrollToken(self, request, context):
        t = self.store.revoke_enroll_token(request.token_id)
        if t is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no enrollment token {request.token_id!r}")
        return enroll_token_pb(t)

    def ListAudit(self, request, context):
        if request.limit < 0 or request.since_unix_ms < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "limit and since_unix_ms must not be negative")
        rows = self.store.audit_log(min(request.limit or 100, 10_000), request.action, request.actor,
                                    request.since_unix_ms)
        return admin_pb2.AuditList(entries=[admin_pb2.AuditEntry(
            ts_unix_ms=r["ts_ms"], who=r["who"], role=r["role"] or "", action=r["action"], target=r["target"] or "",
            result=r["result"], detail=r["detail"] or "") for r in rows])
