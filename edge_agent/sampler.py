"""Once a minute (configurable), one "sample" event in the outbox: the agent process's CPU and RSS, free
disk under the data folder, the request queue depth and how many telemetry events the bounded outbox has
dropped so far (so the loss itself reaches the control plane), and the capture rate the device is configured with:
the control plane exports a device's captures only while its latest sample says capture is on (consent)."""
from __future__ import annotations

import logging
import shutil
import threading

import psutil

log = logging.getLogger("slmops.agent.sampler")


class ResourceSampler:
    def __init__(self, state, runtime, data_dir, interval_s: float, capture_rate: float = 0.0):
        self.state, self.runtime, self.data_dir, self.interval_s = state, runtime, data_dir, interval_s
        self.capture_rate = capture_rate
        self.process = psutil.Process()
        self.process.cpu_percent(None)  # the first reading is always 0; start the measuring window now
        self.stop = threading.Event()

    def values(self) -> dict[str, float]:
        return {"cpu_percent": self.process.cpu_percent(None),
                "rss_bytes": float(self.process.memory_info().rss),
                "disk_free_bytes": float(shutil.disk_usage(self.data_dir).free),
                "queue_depth": float(self.runtime.queue_depth),
                "telemetry_dropped": float(self.state.get("telemetry_dropped", 0)),
                "capture_rate": float(self.capture_rate)}

    def sample_once(self) -> dict[str, float]:
        v = self.values()
        slot = self.runtime.slot
        self.state.record("sample", "resources", model=slot.manifest.ref if slot else "", values=v)
        return v

    def run(self) -> None:
        if self.interval_s <= 0:
            return
        while not self.stop.wait(self.interval_s):
            try:
                self.sample_once()
            except Exception:  # a failed reading must not end sampling
                log.exception("resource sample failed")
