"""Pure checks on what a device sends about itself (Enroll, ReportStatus): every field bounded, so one device
can never make a fleet listing too large to answer; facts a device may not change about itself stay as they were
recorded at enrollment. Refusals name the field and its limit; only free text is clamped.

A device's claims are its own: they describe that device and steer only what it is sent (its hardware class picks
a variant), never what another device gets or what it may download (that follows what the control plane assigned).
"""
from __future__ import annotations

import json
import re

MAX_NAME = 128               # device_name
MAX_AGENT_VERSION = 64
MAX_STATE = 64
MAX_MESSAGE = 2000           # clamped, not refused: an error message may be long
MAX_REF = 128                # model name / version in a report
MAX_HW_WORD = 32             # hardware_class, arch, each execution provider
MAX_PROVIDERS = 16
PUBLIC_KEY_BYTES = 32
_WORD = re.compile(r"^[A-Za-z0-9._-]*$")


class DeviceInputInvalid(ValueError):
    """A device-supplied field is out of bounds (INVALID_ARGUMENT, naming the field)."""


def _text(value: str, field: str, limit: int, required: bool = False) -> str:
    if not isinstance(value, str):
        raise DeviceInputInvalid(f"{field} must be text")
    if required and not value:
        raise DeviceInputInvalid(f"{field} is required")
    if len(value) > limit:
        raise DeviceInputInvalid(f"{field} is {len(value)} characters; at most {limit}")
    if any(ord(c) < 32 for c in value):
        raise DeviceInputInvalid(f"{field} must not contain control characters")
    return value


def _word(value: str, field: str) -> str:
    _text(value, field, MAX_HW_WORD)
    if not _WORD.match(value):
        raise DeviceInputInvalid(f"{field} {value!r} may hold only letters, digits, '.', '_' and '-'")
    return value


def hardware(msg) -> dict:
    """The hardware facts of a Hardware message, bounded; raises DeviceInputInvalid."""
    return bounded_hardware({"hardware_class": msg.hardware_class, "execution_providers": list(msg.execution_providers),
                             "ram_bytes": msg.ram_bytes, "disk_free_bytes": msg.disk_free_bytes, "arch": msg.arch})


def bounded_hardware(hw: dict) -> dict:
    """Hardware facts as plain values, checked against the limits; raises DeviceInputInvalid."""
    providers = hw.get("execution_providers") or []
    if not isinstance(providers, list) or len(providers) > MAX_PROVIDERS:
        raise DeviceInputInvalid(f"hardware.execution_providers must list at most {MAX_PROVIDERS}")
    ram, disk = hw.get("ram_bytes") or 0, hw.get("disk_free_bytes") or 0
    if not isinstance(ram, int) or not isinstance(disk, int) or ram < 0 or disk < 0:
        raise DeviceInputInvalid("hardware.ram_bytes and hardware.disk_free_bytes must be non-negative integers")
    return {"hardware_class": _word(hw.get("hardware_class") or "", "hardware.hardware_class"),
            "execution_providers": [_word(p, "hardware.execution_providers[]") for p in providers],
            "ram_bytes": ram, "disk_free_bytes": disk, "arch": _word(hw.get("arch") or "", "hardware.arch")}


def enrollment(req, allow_keyless: bool) -> dict:
    """Checks an EnrollRequest before any use of its token is spent; raises DeviceInputInvalid."""
    if req.device_public_key and len(req.device_public_key) != PUBLIC_KEY_BYTES:
        raise DeviceInputInvalid("device_public_key must be a raw 32-byte Ed25519 key")
    if not req.device_public_key and not allow_keyless:
        raise DeviceInputInvalid("device_public_key is required: this control plane does not allow key-less "
                                 "enrollment (allow_keyless_enrollment is off)")
    return {"name": _text(req.device_name, "device_name", MAX_NAME, required=True),
            "agent_version": _text(req.agent_version, "agent_version", MAX_AGENT_VERSION),
            "hardware": hardware(req.hardware)}


def status(req, enrolled_hardware: dict) -> dict:
    """The device-row fields a StatusReport sets; raises DeviceInputInvalid. The hardware class stays the one
    recorded at enrollment (it decides which variant a device is sent); the other facts may change."""
    fields = {"current_name": _text(req.current.name, "current.name", MAX_REF),
              "current_version": _text(req.current.version, "current.version", MAX_REF),
              "state": _text(req.state, "state", MAX_STATE), "message": req.message[:MAX_MESSAGE]}
    if req.HasField("hardware"):
        hw = hardware(req.hardware)
        hw["hardware_class"] = enrolled_hardware.get("hardware_class", "")
        fields["hardware"] = hw
    return fields


def json_object(raw: str | None) -> dict:
    """A stored JSON object (hardware, labels), or {} when it is missing or not an object."""
    try:
        v = json.loads(raw or "{}")
    except ValueError:
        return {}
    return v if isinstance(v, dict) else {}


def clamp_row(d: dict) -> dict:
    """A device row as shown to admins, each text cut to its limit: rows stored before these limits existed
    (or anything else) can never make a listing fail."""
    limits = {"name": MAX_NAME, "agent_version": MAX_AGENT_VERSION, "state": MAX_STATE, "message": MAX_MESSAGE,
              "current_name": MAX_REF, "current_version": MAX_REF, "desired_name": MAX_REF,
              "desired_version": MAX_REF}
    return {**d, **{k: (d.get(k) or "")[:n] for k, n in limits.items()}}
