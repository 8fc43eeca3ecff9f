"""Admin RPCs of the fleet: rollouts, device labels/pins/selection, API tokens, the audit log. A mixin of
servicers.AdminServicer (it needs `self.store`); role checks and audit rows come from auth.AuditInterceptor.
Decoding into typed values and refusing bad input happen here; decisions stay in rollouts.py.
"""
from __future__ import annotations

import dataclasses
import json
import secrets
import time

import grpc

from control_plane import auth, rollout_driver
from control_plane import rollouts as ro
from control_plane.store import Store
from slmops.v1 import admin_pb2, common_pb2

GATE_FIELDS = {"min_success_ratio": "min_success_ratio", "max_failure_ratio": "max_failure_ratio",
               "max_error_rate": "max_error_rate", "min_requests": "min_requests",
               "max_p95_latency_ms": "max_p95_latency_ms", "min_soak_seconds": "min_soak_s",
               "install_timeout_seconds": "install_timeout_s"}


def _ref(r: ro.Ref | None) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(name=r.name, version=r.version) if r else common_pb2.ModelRef()


def device_pb(d: dict) -> admin_pb2.Device:
    hw = json.loads(d.get("hardware") or "{}")
    return admin_pb2.Device(
        device_id=d["device_id"], name=d["name"], state=d["state"], message=d["message"],
        current=common_pb2.ModelRef(name=d["current_name"], version=d["current_version"]),
        desired=common_pb2.ModelRef(name=d["desired_name"], version=d["desired_version"]),
        last_seen_unix_ms=d["last_seen_ms"], agent_version=d["agent_version"],
        hardware=common_pb2.Hardware(**hw) if hw else None, labels=json.loads(d.get("labels") or "{}"),
        pinned=common_pb2.ModelRef(name=d.get("pin_name") or "", version=d.get("pin_version") or ""))


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
        devices = rollout_driver.fleet(self.store)
        chosen = {d for d, v in devices.items() if spec.selector.matches(v) and v.pinned is None}
        if not chosen:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"the selector {json.dumps(dataclasses.asdict(spec.selector))} matches no unpinned device")
        principal = auth.admin_principal(self.store, context) or {"name": "?"}
        with self.store.rollouts_lock:
            for row in self.store.rollout_rows(rollout_driver.UNFINISHED):
                other = ro.from_json(row["state"])
                overlap = sorted(chosen & ({d for d, v in devices.items() if other.spec.selector.matches(v)}
                                           | {a.device_id for a in other.assignments}))
                if overlap:
                    context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                  f"device {overlap[0]} (and {len(overlap) - 1} more) is already in rollout "
                                  f"{other.rollout_id} ({other.status}); abort it or let it finish first")
            r = ro.Rollout("ro_" + secrets.token_hex(4), spec, int(time.time() * 1000))
            rollout_driver.save(self.store, r, created_by=principal["name"])
        self.store.rollouts_changed.set()
        return rollout_pb(r, self.store.rollout_row(r.rollout_id))

    def _get(self, context, rollout_id: str) -> ro.Rollout:
        r = rollout_driver.load(self.store, rollout_id)
        if r is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no rollout {rollout_id!r}")
        return r

    def GetRollout(self, request, context):
        r = self._get(context, request.rollout_id)
        return rollout_pb(r, self.store.rollout_row(r.rollout_id))

    def ListRollouts(self, request, context):
        return admin_pb2.RolloutList(rollouts=[rollout_pb(ro.from_json(row["state"]), row)
                                               for row in self.store.rollout_rows()])

    def _operator(self, request, context, event: str):
        who = (auth.admin_principal(self.store, context) or {"name": "?"})["name"]
        with self.store.rollouts_lock:
            r = self._get(context, request.rollout_id)
            try:
                r = ro.operator_event(r, event, who)
            except ro.TransitionRefused as e:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"rollout {r.rollout_id}: {e}")
            rollout_driver.save(self.store, r)
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
        bad = [k for k in request.labels if not k or len(k) > 63 or len(request.labels[k]) > 63]
        if bad:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"label keys must be 1-63 characters and values "
                                                            f"at most 63: {bad[:3]}")
        self.store.set_labels(request.device_id, dict(request.labels))
        self.store.rollouts_changed.set()
        return device_pb(self.store.device(request.device_id))

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
        token = self.store.create_api_token(request.role, request.name)
        return admin_pb2.ApiToken(token=token, role=request.role, name=request.name)

    def ListAudit(self, request, context):
        rows = self.store.audit_log(request.limit or 100, request.action)
        return admin_pb2.AuditList(entries=[admin_pb2.AuditEntry(
            ts_unix_ms=r["ts_ms"], who=r["who"], role=r["role"] or "", action=r["action"], target=r["target"] or "",
            result=r["result"], detail=r["detail"] or "") for r in rows])
