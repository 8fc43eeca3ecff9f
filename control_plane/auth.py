"""Who is calling: bearer tokens in gRPC metadata, checked against hashed tokens in the store."""
from __future__ import annotations

import grpc

from control_plane.store import Store


def bearer(context: grpc.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata():
        if key == "authorization" and value.startswith("Bearer "):
            return value[len("Bearer "):]
    return None


def require_device(store: Store, context: grpc.ServicerContext, device_id: str | None = None) -> dict:
    """The calling device, or abort UNAUTHENTICATED/PERMISSION_DENIED. A device may only act as itself."""
    token = bearer(context)
    dev = store.device_for_token(token) if token else None
    if dev is None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown device token")
    if device_id and device_id != dev["device_id"]:
        context.abort(grpc.StatusCode.PERMISSION_DENIED,
                      f"device {dev['device_id']} may not act for device {device_id}")
    return dev


def require_admin(store: Store, context: grpc.ServicerContext) -> str:
    token = bearer(context)
    role = store.admin_role(token) if token else None
    if role is None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown admin token")
    return role
