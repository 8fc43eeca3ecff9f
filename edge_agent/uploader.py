"""Store-and-forward telemetry: events wait in the local outbox and go up in batches with their sequence
numbers; a batch is deleted locally only after the control plane acknowledged it (it deduplicates)."""
from __future__ import annotations

import logging
import threading

from edge_agent.control_client import Backoff, Refused
from edge_agent.state import AgentState
from slmops.errors import TransportError

log = logging.getLogger("slmops.agent.telemetry")


class Uploader:
    def __init__(self, state: AgentState, client, device_id_fn, interval_s: float, batch: int,
                 backoff: Backoff):
        self.state, self.client, self.device_id_fn = state, client, device_id_fn
        self.interval_s, self.batch, self.backoff = interval_s, batch, backoff
        self.stop = threading.Event()

    def flush_once(self) -> int:
        """Uploads what is pending, batch by batch. Returns how many events were acknowledged."""
        device_id = self.device_id_fn()
        if not device_id:
            return 0
        sent = 0
        while True:
            events = self.state.pending(self.batch)
            if not events:
                return sent
            self.client.upload(device_id, events)
            self.state.ack(events[-1]["seq"])
            sent += len(events)

    def run(self) -> None:
        while not self.stop.wait(self.interval_s):
            try:
                self.flush_once()
                self.backoff.reset()
            except (TransportError, Refused) as e:
                delay = self.backoff.next()
                log.info("telemetry upload deferred (%s); next try in %.1f s", e, delay)
                self.stop.wait(delay)
