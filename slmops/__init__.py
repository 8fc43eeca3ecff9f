"""SLMOps: shared core (contract, manifest, chat format, CLI)."""
__version__ = "0.1.0"
