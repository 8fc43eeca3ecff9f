"""Typed agent configuration, validated at construction. Environment variables are read only here:

    SLMOPS_API_KEYS        comma-separated API keys the local HTTP/gRPC APIs require (needed beyond loopback)
    SLMOPS_ENROLL_TOKEN    the enrollment token, when neither enroll_token nor enroll_token_file is given
                           (keeps it out of `ps`; so does enroll_token_file)
"""
from __future__ import annotations

import ipaddress
import os
import pathlib
from dataclasses import dataclass

from edge_agent.engine import EXECUTION_PROVIDERS
from slmops.errors import ConfigError

AGENT_VERSION = "0.1.0"


MAX_CONTROL_PLANES = 16   # addresses in --control-plane (replicas of one control plane)
MAX_INFERENCE_THREADS = 256


def _host_port(value: str, what: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{what} {value!r} must be HOST:PORT")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class AgentConfig:
    control_plane: str                   # HOST:PORT, or replicas of one control plane comma separated (failover)
    data_dir: pathlib.Path
    http: str = "127.0.0.1:8080"
    grpc: str = ""                       # HOST:PORT of the gRPC inference API; "" = off
    enroll_token: str = ""               # visible in `ps` when passed as a flag: prefer the file or the env var
    enroll_token_file: pathlib.Path | None = None  # a file holding the enrollment token (read when enrolling)
    device_name: str = ""
    api_keys: tuple[str, ...] = ()       # SLMOPS_API_KEYS (comma separated); required beyond loopback
    max_concurrent: int = 4              # sequences generating at once (they share batches of this many)
    batch_wait_ms: float = 10.0          # a request waits this long for others to batch with, when busy
    max_queue: int = 8                   # requests waiting for a slot before 429
    max_prompt_tokens: int = 2048
    max_new_tokens: int = 512
    request_timeout_s: float = 120.0
    telemetry_interval_s: float = 2.0
    telemetry_batch: int = 500
    telemetry_max_rows: int = 100_000    # local buffer bound; oldest dropped first
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 15.0
    ca_cert: pathlib.Path | None = None  # the control plane's CA (keys/ca.pem); pinned at first start
    insecure_loopback_dev: bool = False  # plaintext gRPC to a loopback control plane (development only)
    min_download_rate_bps: int = 0       # 0 = no floor (slow-retrieval defence when set)
    download_parallelism: int = 4        # chunks fetched at once
    trusted_root: pathlib.Path | None = None  # a root.json shipped with the agent; else pinned at enrollment
    resync_s: float = 30.0               # re-check the last desired state this often (retries, resumes)
    failed_retry_s: float = 600.0        # a refused assignment is tried again after this cool-down
    min_free_disk_bytes: int = 256 << 20 # an update that would leave less free disk is refused
    load_memory_factor: float = 1.5      # RAM a model needs ~= its files x this
    min_free_memory_bytes: int = 256 << 20
    max_swap_pause_s: float = 10.0       # longest pause of new requests when two models do not fit
    probation_s: float = 30.0            # watch a new model this long after the switch (0 = off)
    probation_min_requests: int = 5
    probation_max_error_ratio: float = 0.2
    probation_max_p95_ms: float = 0.0    # 0 = no latency ceiling
    sideload_dir: pathlib.Path | None = None  # default data_dir/sideload
    sample_interval_s: float = 60.0      # resource samples (CPU, RSS, disk, queue); 0 = off
    golden_interval_s: float = 0.0       # scheduled golden-prompt checks; 0 = off
    capture_rate: float = 0.0            # share of requests captured (prompt + answer, redacted); 0 = off
    capture_redactor: str = ""           # "module:function" str -> str; "" = edge_agent.capture.redact_default
    execution_providers: tuple[str, ...] = ("cpu",)  # preference order; the first that loads the model serves
    inference_threads: int = 0           # onnxruntime intra-op threads per model; 0 = one per core it may use
    http_max_connections: int = 256      # open HTTP connections; more are closed at once (below the fd limit)
    http_header_timeout_s: float = 10.0  # a connection without a whole request head by then is closed

    def __post_init__(self) -> None:
        hosts = self.control_plane_hosts()
        if self.enroll_token and self.enroll_token_file:
            raise ConfigError("give the enrollment token once: enroll_token or enroll_token_file, not both")
        if self.enroll_token_file is not None and not pathlib.Path(self.enroll_token_file).is_file():
            raise ConfigError(f"enroll_token_file {self.enroll_token_file} is not a file")
        host, _ = _host_port(self.http, "--http")
        if self.grpc and not is_loopback(_host_port(self.grpc, "--grpc")[0]) and not self.api_keys:
            raise ConfigError(f"--grpc {self.grpc} binds beyond loopback: set SLMOPS_API_KEYS so apps must "
                              "present a key")
        if not is_loopback(host) and not self.api_keys:
            raise ConfigError(f"--http {self.http} binds beyond loopback: set SLMOPS_API_KEYS so apps must "
                              "present a key")
        if self.http_header_timeout_s <= 0:
            raise ConfigError("http_header_timeout_s must be > 0")
        for name in ("max_concurrent", "max_queue", "max_prompt_tokens", "max_new_tokens", "telemetry_batch",
                     "http_max_connections"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if not 0 <= self.inference_threads <= MAX_INFERENCE_THREADS:
            raise ConfigError(f"inference_threads {self.inference_threads} must be between 0 (one per core) and "
                              f"{MAX_INFERENCE_THREADS}")
        if not 0 <= self.batch_wait_ms <= 1000:
            raise ConfigError(f"batch_wait_ms {self.batch_wait_ms} must be between 0 and 1000")
        if self.sample_interval_s < 0 or self.golden_interval_s < 0:
            raise ConfigError("sample and golden intervals must be 0 (off) or positive seconds")
        eps = self.execution_providers
        if isinstance(eps, str) or not eps:
            raise ConfigError("--execution-providers needs a preference list of names, e.g. cuda,cpu")
        unknown = [p for p in eps if p not in EXECUTION_PROVIDERS]
        if unknown:
            raise ConfigError(f"--execution-providers: unknown execution provider {unknown[0]!r}; known: "
                              f"{', '.join(EXECUTION_PROVIDERS)}")
        if len(set(eps)) != len(eps):
            raise ConfigError(f"--execution-providers {','.join(eps)} names a provider twice")
        if not 0.0 <= self.capture_rate <= 1.0:
            raise ConfigError(f"capture_rate {self.capture_rate} must be between 0 and 1")
        if not 0 <= self.probation_max_error_ratio <= 1:
            raise ConfigError("probation_max_error_ratio must be between 0 and 1")
        if self.probation_s < 0 or self.resync_s <= 0 or self.max_swap_pause_s <= 0:
            raise ConfigError("probation_s must be >= 0; resync_s and max_swap_pause_s must be > 0")
        if self.backoff_initial_s <= 0 or self.backoff_max_s < self.backoff_initial_s:
            raise ConfigError("backoff must satisfy 0 < initial <= max")
        if self.insecure_loopback_dev and not all(is_loopback(h) for h in hosts):
            raise ConfigError(f"--insecure-loopback-dev needs a loopback --control-plane, not {self.control_plane}")
        if not self.insecure_loopback_dev and self.ca_cert is None and not self.pinned_ca.exists():
            raise ConfigError("TLS is the default: pass --ca-cert (the control plane's keys/ca.pem) on the first "
                              "start, or --insecure-loopback-dev for a loopback development control plane")
        if self.ca_cert is not None and not pathlib.Path(self.ca_cert).is_file():
            raise ConfigError(f"--ca-cert {self.ca_cert} is not a file")

    def control_plane_hosts(self) -> list[str]:
        """The hosts of --control-plane's addresses (each checked: HOST:PORT, at most MAX_CONTROL_PLANES)."""
        addresses = self.control_plane.split(",")
        if len(addresses) > MAX_CONTROL_PLANES:
            raise ConfigError(f"--control-plane names {len(addresses)} addresses; at most {MAX_CONTROL_PLANES}")
        if len(set(a.strip() for a in addresses)) != len(addresses):
            raise ConfigError(f"--control-plane {self.control_plane!r} names an address twice")
        return [_host_port(a.strip(), "--control-plane")[0] for a in addresses]

    def enrollment_token(self) -> str:
        """The enrollment token: given directly, or the first line of enroll_token_file ("" when neither)."""
        if self.enroll_token_file is None:
            return self.enroll_token
        try:
            lines = pathlib.Path(self.enroll_token_file).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"enroll_token_file {self.enroll_token_file} cannot be read: {e}") from e
        return lines[0].strip() if lines else ""

    @property
    def pinned_ca(self) -> pathlib.Path:
        return pathlib.Path(self.data_dir) / "identity" / "ca.pem"

    @property
    def http_host_port(self) -> tuple[str, int]:
        return _host_port(self.http, "--http")

    @staticmethod
    def parse_providers(value: str) -> tuple[str, ...]:
        """"cuda, CPU" -> ("cuda", "cpu"); validated when the config is built."""
        return tuple(p.strip().lower() for p in value.split(","))

    @classmethod
    def from_env(cls, **kwargs) -> "AgentConfig":
        keys = tuple(k for k in os.environ.get("SLMOPS_API_KEYS", "").split(",") if k.strip())
        if not kwargs.get("enroll_token") and not kwargs.get("enroll_token_file"):
            kwargs["enroll_token"] = os.environ.get("SLMOPS_ENROLL_TOKEN", "").strip()
        return cls(api_keys=keys, **kwargs)
