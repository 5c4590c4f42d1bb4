"""Executors for sweeps: a local process pool, or a Ray cluster. Both run
:func:`gatesmith.flows.sweep_stages.run_trial`; only how a task reaches a CPU differs.

An executor is a context manager with ``capacity`` (trials it runs at once), ``submit(task)`` (a
handle) and ``wait(handles, timeout)`` (``[(handle, result, error)]`` of the finished ones, where
``error`` is a message when the worker itself died: a crash or out of memory).

Ray addresses: ``local`` starts a Ray instance inside this process (on 127.0.0.1) and stops it at
the end; ``auto`` joins the cluster started on this machine with ``ray start``; ``HOST:PORT`` (or
``ray://HOST:PORT``) joins that head. A cluster with token authentication (Ray's default) needs
``RAY_AUTH_MODE=token`` in the driver's environment. Workers must have gatesmith installed, and
trial artefacts (Verilog, bitstreams) land under OUT on the node that ran the trial: use a shared
filesystem on a multi-node cluster (metrics always come back to the driver).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import socket
import threading
import time

from ..errors import ConfigError, ToolMissingError
from .sweep_stages import run_trial

__all__ = ["PoolExecutor", "RayExecutor", "CONNECT_TIMEOUT_S"]

CONNECT_TIMEOUT_S = 30.0  # bound on joining a Ray cluster


# Modules a pool worker needs, imported once by the fork server (torch alone takes seconds):
# every pool of the process forks its workers from that already-warm, single-threaded server.
_PRELOAD = ["gatesmith.flows.sweep_stages", "gatesmith.flows.verilog", "gatesmith.flows.workload",
            "gatesmith.host.systolic", "gatesmith.host.bitserial", "gatesmith.host.pim"]


def _mp_context():
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        return ctx
    return multiprocessing.get_context("spawn")


class PoolExecutor:
    """``jobs`` worker processes, forked from a fork server that has imported gatesmith (a plain
    fork of the driver is unsafe once it runs threads; a spawn pays every import per worker)."""

    def __init__(self, jobs: int):
        if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
            raise ConfigError(f"-j must be an integer >= 1, not {jobs!r}")
        self.capacity = jobs
        self.name = f"local pool, -j {jobs}"
        self._pool = None

    def __enter__(self):
        self._pool = cf.ProcessPoolExecutor(self.capacity, mp_context=_mp_context())
        self.startup_s = 0.0  # workers start with the first tasks
        return self

    def __exit__(self, *exc):
        if exc[0] is not None:  # interrupted: stop running trials now, not when they end
            for proc in list((self._pool._processes or {}).values()):
                proc.terminate()
        self._pool.shutdown(wait=exc[0] is None, cancel_futures=True)

    def submit(self, task: dict):
        return self._pool.submit(run_trial, task)

    def wait(self, handles, timeout: float):
        done, _ = cf.wait(handles, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        out, broken = [], False
        for f in done:
            try:
                out.append((f, f.result(), None))
            except cf.process.BrokenProcessPool:
                broken = True
                out.append((f, None, "the worker process died (crash or out of memory)"))
        if broken:  # every task in flight is lost with the pool: start a new one
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = cf.ProcessPoolExecutor(self.capacity, mp_context=_mp_context())
        return out


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray must be local, auto or HOST:PORT, not {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConfigError(f"--ray {address}: the Ray head is unreachable ({e.strerror or e}, "
                          f"checked for {timeout:g} s)") from None  # fmt: skip


class RayExecutor:
    """Trials as Ray tasks with ``cpus`` CPUs and ``memory_mb`` MiB of memory each."""

    def __init__(self, address: str, *, cpus: float = 1, memory_mb: int | None = None,
                 local_cpus: int | None = None):  # fmt: skip
        self.address, self.cpus, self.memory_mb = address, cpus, memory_mb
        self.local_cpus = local_cpus
        self.name = f"Ray {address}"
        self._owned = False
        if address not in ("local", "auto"):
            _check_reachable(address)  # before any work: a bounded, clear failure

    def _init(self):
        try:
            import ray
        except ImportError:
            raise ToolMissingError("--ray needs ray: pip install ray") from None
        kw = {"log_to_driver": False, "logging_level": "WARNING"}
        if self.address == "local":
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # stay on 127.0.0.1
            kw.update(include_dashboard=False, num_cpus=self.local_cpus)
        else:
            kw["address"] = self.address
        if self.address == "local":  # Ray starts its processes from the main thread only
            ray.init(**kw)
            self._owned = True
            return ray
        box: dict = {}

        def connect():
            try:
                box["ctx"] = ray.init(**kw)
            except Exception as e:  # noqa: BLE001 - reported below
                box["error"] = e

        t = threading.Thread(target=connect, daemon=True)
        t.start()
        t.join(CONNECT_TIMEOUT_S)
        if t.is_alive() or "error" in box:
            why = box.get("error", f"no answer in {CONNECT_TIMEOUT_S:g} s")
            raise ConfigError(
                f"--ray {self.address}: could not join the Ray cluster: {why} (a cluster with "
                "token authentication needs RAY_AUTH_MODE=token; `ray start --head` starts one)"
            )
        return ray

    def __enter__(self):
        t0 = time.monotonic()
        ray = self._init()
        self._ray = ray
        total = ray.cluster_resources().get("CPU", 1)
        self.capacity = max(1, int(total // max(self.cpus, 1e-3)))
        opts = {"num_cpus": self.cpus, "max_retries": 0}
        if self.memory_mb:
            opts["memory"] = int(self.memory_mb) * 2**20
        self._remote = ray.remote(run_trial).options(**opts)
        self.startup_s = round(time.monotonic() - t0, 3)
        return self

    def __exit__(self, *exc):
        if exc[0] is not None:
            for ref in getattr(self, "_inflight", ()):
                self._ray.cancel(ref, force=True)
        self._ray.shutdown()  # disconnects; stops the instance only when we started it

    def submit(self, task: dict):
        ref = self._remote.remote(task)
        self._inflight = getattr(self, "_inflight", set()) | {ref}
        return ref

    def wait(self, handles, timeout: float):
        ready, _ = self._ray.wait(list(handles), num_returns=1, timeout=timeout)
        out = []
        for ref in ready:
            self._inflight.discard(ref)
            try:
                out.append((ref, self._ray.get(ref), None))
            except Exception as e:  # noqa: BLE001 - worker crash, OOM kill, lost node
                out.append((ref, None, f"the Ray task failed: {type(e).__name__}: {e}"[:1500]))
        return out
