"""The executor seam: how a worker stage becomes running processes.

    LocalProcesses  one worker process per stage on the control plane's machine (the default)
    Torchrun        the stage under `torchrun` (torch.distributed.run): N processes per node, DDP over gloo on
                    CPUs / NCCL on GPUs; with nnodes > 1 the same command on every node joins a rendezvous
                    (docs/PIPELINES.md says how to point it at a cluster)

Every worker runs in its own session (process group), so cancel and timeouts stop the whole tree, and asks
the kernel to send it SIGTERM if its parent dies. A memory limit is an address-space rlimit each worker process
sets on itself: a stage over it fails with MemoryError in its log instead of taking the machine down.
"""
from __future__ import annotations

import ctypes
import os
import pathlib
import resource
import signal
import subprocess
import sys
from dataclasses import dataclass

from control_plane.pipelines.recipe import Executor, Resources

WORKER = ["-m", "control_plane.pipelines.worker"]
MEMORY_ENV = "SLMOPS_PIPELINE_WORKER_MEMORY_MB"   # read by the worker (each torchrun rank) at start
PR_SET_PDEATHSIG = 1


def apply_limits(memory_mb: int) -> None:
    """Called by the worker itself first thing (a preexec_fn would run Python between fork and exec in a process
    whose gRPC threads then abort the child): an address-space limit, and SIGTERM when its parent dies."""
    if memory_mb:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    parent = os.getppid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        return  # not Linux: the restart path still kills leftover process groups
    if os.getppid() != parent:   # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class Handle:
    popen: subprocess.Popen

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM to the whole process group, SIGKILL after `grace_s`."""
        kill_group(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(grace_s)
        except subprocess.TimeoutExpired:
            kill_group(self.popen.pid, signal.SIGKILL)
            self.popen.wait()


def kill_group(pgid: int, sig=signal.SIGKILL) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def is_our_worker(pid: int, marker: str) -> bool:
    """Whether `pid` is still a worker we started (its command line names the stage spec), not a reused pid."""
    try:
        return marker in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def command(spec_path: pathlib.Path, ex: Executor) -> list[str]:
    if ex.kind == "torchrun":
        rdzv = ["--standalone"] if ex.nnodes == 1 else ["--rdzv-backend", "c10d", "--rdzv-endpoint",
                                                       ex.rdzv_endpoint, "--rdzv-id", spec_path.stem]
        return [sys.executable, "-m", "torch.distributed.run", *rdzv, "--nnodes", str(ex.nnodes),
                "--nproc-per-node", str(ex.nproc_per_node), *WORKER, str(spec_path)]
    return [sys.executable, *WORKER, str(spec_path)]


def start(spec_path: pathlib.Path, log_path: pathlib.Path, cwd: str, resources: Resources,
          ex: Executor) -> Handle:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1", MEMORY_ENV: str(resources.memory_mb)}
    if ex.kind == "torchrun":
        env.setdefault("OMP_NUM_THREADS", "1")  # N processes share the cores
    root = str(pathlib.Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(command(spec_path, ex), cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    return Handle(popen)
