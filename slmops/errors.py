"""The SLMOps error tree. Third-party errors are mapped into it once, at the boundary, with `raise ... from`.

    SlmopsError
    ├── ConfigError          a setting or argument is invalid (named in the message)
    ├── ArtifactInvalid      bytes, size, signature or manifest do not match what is trusted
    │                        -> never installed; the serving model is untouched; reported as an event
    ├── TransportError       the other side could not be reached or broke off -> retried with backoff
    │   └── StorageUnavailable   the control plane's state database or blob store could not be reached
    │                            (the message names which, and where)
    ├── RequestInvalid       a client request is malformed (HTTP 4xx / gRPC INVALID_ARGUMENT)
    └── ModelLoadError       an installed model could not be loaded or failed its smoke test

The agent's update states add their own (edge_agent/decisions.py): DiskFull, ProbationFailed, LocalIOError (an
OSError inside a state) and SideloadRefused (an ArtifactInvalid); decisions.failure_kind names the event of each.
"""


class SlmopsError(Exception):
    """Base of every error SLMOps raises on purpose."""


class ConfigError(SlmopsError):
    pass


class ArtifactInvalid(SlmopsError):
    pass


class TransportError(SlmopsError):
    pass


class StorageUnavailable(TransportError):
    pass


class RequestInvalid(SlmopsError):
    pass


class ModelLoadError(SlmopsError):
    pass
