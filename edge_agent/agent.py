"""Wires the agent: local state, runtime, serving, HTTP (uvicorn), the reconciler and the uploader."""
from __future__ import annotations

import functools
import logging
import threading

from prometheus_client.core import GaugeMetricFamily

from edge_agent import device_identity
from edge_agent.config import AgentConfig
from edge_agent.control_client import Backoff, ControlClient
from edge_agent.capture import CapturingServing, load_redactor
from edge_agent.engine import OgaEngine
from edge_agent.golden import GoldenChecker
from edge_agent.http_api import build_app
from edge_agent.http_server import HttpLimits, make_server
from edge_agent.metrics import AgentMetrics
from edge_agent.reconciler import Reconciler
from edge_agent.runtime import Runtime
from edge_agent.sampler import ResourceSampler
from edge_agent.serving import Serving
from edge_agent.sideload import SideloadWatcher
from edge_agent.state import AgentState
from edge_agent.uploader import Uploader

log = logging.getLogger("slmops.agent")


def reporting_fallbacks(engine_factory, state: AgentState):
    """Each model load that passed over a preferred execution provider leaves a telemetry event saying which,
    why, and what serves instead, so the fleet view shows devices that fell back (e.g. cuda -> cpu)."""
    def load(path, manifest):
        engine = engine_factory(path, manifest)
        for provider, reason in getattr(engine, "fallbacks", ()):
            state.record("event", "execution_provider_fallback", model=manifest.ref, outcome=engine.provider,
                         detail=f"{provider} unavailable: {reason}")
        return engine
    return load


class ExecutionProviderInfo:
    """/metrics: slmops_agent_execution_provider_info{model,provider} 1 for the serving model."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    def collect(self):
        g = GaugeMetricFamily("slmops_agent_execution_provider_info",
                              "the execution provider the serving model runs on", labels=["model", "provider"])
        slot = self.runtime.slot
        if slot:
            g.add_metric([slot.manifest.ref, getattr(slot.engine, "provider", "") or "cpu"], 1)
        yield g


class Agent:
    def __init__(self, cfg: AgentConfig, engine_factory=None):
        self.cfg = cfg
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.state = AgentState(cfg.data_dir / "agent.db", cfg.telemetry_max_rows)
        self.runtime = Runtime(cfg.max_concurrent, cfg.max_queue)
        self.metrics = AgentMetrics(self.runtime, self.state)
        # Concurrent requests share batches of up to max_concurrent rows (edge_agent/batching.py).
        engine_factory = reporting_fallbacks(
            engine_factory or functools.partial(OgaEngine, providers=cfg.execution_providers,
                                                max_batch=cfg.max_concurrent, batch_wait_s=cfg.batch_wait_ms / 1000,
                                                on_batch=self.metrics.observe_batch,
                                                threads=cfg.inference_threads), self.state)
        serving_args = (self.runtime, self.state, cfg.max_prompt_tokens, cfg.max_new_tokens, cfg.request_timeout_s)
        self.serving = CapturingServing(*serving_args, capture_rate=cfg.capture_rate,
                                        redact=load_redactor(cfg.capture_redactor)) if cfg.capture_rate \
            else Serving(*serving_args)
        ca = None if cfg.insecure_loopback_dev else device_identity.pin_ca(cfg.pinned_ca, cfg.ca_cert)
        self.client = ControlClient(cfg.control_plane, ca, cfg.data_dir / "identity" / "device-key.pem")
        self.reconciler = Reconciler(cfg, self.state, self.runtime, engine_factory, self.client)
        self.uploader = Uploader(self.state, self.client, lambda: self.reconciler.device_id,
                                 cfg.telemetry_interval_s, cfg.telemetry_batch,
                                 Backoff(cfg.backoff_initial_s, cfg.backoff_max_s))
        self.metrics.registry.register(ExecutionProviderInfo(self.runtime))
        self.sampler = ResourceSampler(self.state, self.runtime, cfg.data_dir, cfg.sample_interval_s,
                                       cfg.capture_rate)
        self.golden = GoldenChecker(self.state, self.runtime, cfg.golden_interval_s)
        self.app = build_app(self.serving, cfg.api_keys, self.metrics.render)

    def run(self) -> None:
        threads = [threading.Thread(target=self.reconciler.run, name="reconciler", daemon=True),
                   threading.Thread(target=self.uploader.run, name="uploader", daemon=True),
                   threading.Thread(target=self.sampler.run, name="sampler", daemon=True),
                   threading.Thread(target=self.golden.run, name="golden", daemon=True)]
        for t in threads:
            t.start()
        sideload = SideloadWatcher(self.cfg.sideload_dir or self.cfg.data_dir / "sideload", self.reconciler.work)
        sideload.start()
        grpc_server = None
        if self.cfg.grpc:
            from edge_agent.grpc_inference import start_server
            grpc_server = start_server(self.serving, self.cfg.grpc, self.cfg.api_keys)
        host, port = self.cfg.http_host_port
        server = make_server(self.app, host, port, HttpLimits(header_timeout_s=self.cfg.http_header_timeout_s,
                                                              max_connections=self.cfg.http_max_connections),
                             timeout_graceful_shutdown=5)
        log.info("agent HTTP API on http://%s:%d (control plane %s)", host, port, self.cfg.control_plane)
        try:
            server.run()  # handles SIGINT/SIGTERM: stops accepting, lets in-flight requests finish
        finally:
            if grpc_server is not None:
                grpc_server.stop(5)
            sideload.stop()
            self.reconciler.stop.set()
            self.uploader.stop.set()
            self.sampler.stop.set()
            self.golden.stop.set()
            try:
                self.uploader.flush_once()
            except Exception as e:  # best effort on the way out; events stay in the outbox
                log.info("final telemetry flush skipped: %s", e)
            self.client.close()
