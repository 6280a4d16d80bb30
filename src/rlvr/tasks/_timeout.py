"""Bounded-time calls into helper processes, for graders that may not return (math-verify / sympy).

Why a process: math-verify's own timeout uses signal.alarm, which works only in the main thread,
and some sympy work (10^(10^10), a huge factorial) runs inside one C call that no signal can
interrupt. A thread cannot be killed; a process can. So a grader runs in a small pool of
persistent worker processes; the caller waits for the reply with a deadline, and on a miss kills
that worker and starts a fresh one in the background. The caller's cost is bounded by
`timeout_seconds` (plus a kill), from any thread, in any process.

Protocol: each worker is `python -m rlvr.tasks._timeout HANDLER [WARMUP]` (both "module:function"),
one JSON object per line on stdin (a request) and on stdout (the reply); the first stdout line
says the worker is ready (WARMUP, if given, has run: heavy imports happen before any deadline).
A plain subprocess rather than multiprocessing: nothing of the parent's __main__ (a training
script that imports torch) is re-imported, and the global start method is left alone. Replies
are dicts; the handler's exceptions become {"error": ...} replies. Inside a worker, stdout is
redirected to /dev/null (stray prints cannot corrupt the protocol), stderr goes to /dev/null,
SIGINT is ignored (Ctrl-C is the parent's business), address space is capped
(WORKER_MEMORY_BYTES), each request may burn at most WORKER_CPU_SECONDS_PER_REQUEST of CPU
(RLIMIT_CPU: the kernel ends a worker whose parent died mid-request), and the worker exits when
its stdin closes (the parent died while it was idle).

Pools are per process (`shared_pool`), created lazily, forgotten in a forked child (its copies
of the pipes belong to the parent), and their workers are killed at interpreter exit.
POSIX only (poll on pipes).
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

WORKER_MEMORY_BYTES = 4 * 1024**3  # a runaway big-integer computation fails with MemoryError here
# CPU seconds one request may burn before the kernel ends the worker (SIGXCPU): the parent's
# deadline normally acts long before; this bounds a worker whose parent died mid-request.
WORKER_CPU_SECONDS_PER_REQUEST = 60
STARTUP_TIMEOUT_SECONDS = 120.0  # a fresh worker's imports on a loaded 2-core laptop; not a grading deadline
_SRC_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass(frozen=True)
class Outcome:
    """The result of one bounded call.

    status: "ok" (value is the handler's reply), "timeout" (no reply within the deadline; the
            worker was killed), or "error" (the handler raised, the worker died or could not start).
    value:  the reply dict when status is "ok", else None.
    detail: a short reason for logs and samples files ("" when ok).
    """

    status: str
    value: dict[str, Any] | None = None
    detail: str = ""


class _Worker:
    """One worker process; used by one thread at a time (the pool guarantees it)."""

    def __init__(self, handler: str, warmup: str | None) -> None:
        env = dict(os.environ)
        # The worker imports rlvr the way this process did, installed or not.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_SRC_DIR, env.get("PYTHONPATH", "")) if p)
        args = [sys.executable, "-m", "rlvr.tasks._timeout", handler] + ([warmup] if warmup else [])
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            close_fds=True,
        )
        self.ready = False
        self._eof = False  # the worker's stdout reached end of file (it exited or closed it)
        self.broken = False
        self._buffer = b""

    def call(self, payload: bytes, timeout_seconds: float) -> Outcome:
        """Send one encoded request and wait for the reply; the deadline starts once the worker is ready.

        Afterwards `broken` says whether the conversation is in an unknown state (no reply, a
        garbled one, a closed pipe): such a worker must be killed, never reused.
        """
        self.broken = True
        if not self.ready:
            if self._read_line(STARTUP_TIMEOUT_SECONDS) is None:
                return Outcome("error", detail="worker did not start")
            self.ready = True
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(payload + b"\n")
            self.process.stdin.flush()
        except OSError:
            return Outcome("error", detail="worker pipe closed")
        line = self._read_line(timeout_seconds)
        if line is None:
            # End of file means the worker died (it may not be reaped yet, so alive() can still say
            # True for a moment on a loaded machine): an error, not a timeout.
            if self._eof or not self.alive():
                return Outcome("error", detail="the worker exited without a reply")
            return Outcome("timeout", detail="no reply in time")
        try:
            reply = json.loads(line)
        except ValueError:
            return Outcome("error", detail="unreadable reply")
        if not isinstance(reply, dict):
            return Outcome("error", detail="reply is not an object")
        self.broken = False
        if "error" in reply:
            return Outcome("error", detail=str(reply["error"])[:200])
        return Outcome("ok", value=reply)

    def _read_line(self, timeout_seconds: float) -> bytes | None:
        """The next stdout line, or None on deadline or end of file."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        # poll, not select: select fails on descriptors >= 1024, common in a big training process.
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        deadline = time.monotonic() + timeout_seconds
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(max(1, int(remaining * 1000))):
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                self._eof = True
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a SIGKILLed process always goes
            pass
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


class WorkerPool:
    """Up to `max_workers` workers running `handler` ("module:function": dict -> dict).

    call() takes an idle worker (starting one if fewer than max_workers exist, else waiting for
    one), so concurrent callers are served in parallel up to max_workers. Waiting for a busy
    worker is bounded too: every call in progress ends within its own deadline.
    """

    def __init__(self, handler: str, max_workers: int = 2, warmup: str | None = None) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        self.handler = handler
        self.warmup = warmup
        self.max_workers = max_workers
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()  # idle and busy, so close() can kill them all
        self._count = 0
        self._closed = False
        self._cond = threading.Condition()
        self.restarts = 0  # workers killed on a deadline or found dead (for metrics and tests)

    def call(self, request: dict[str, Any], timeout_seconds: float) -> Outcome:
        """The handler's reply to `request` (JSON-serialisable), within timeout_seconds of a ready worker."""
        payload = json.dumps(request).encode("ascii")  # a bad request fails here, before any worker
        worker = self._acquire()
        if worker is None:
            return Outcome("error", detail="pool closed or no worker could start")
        outcome = Outcome("error", detail="interrupted")
        try:
            outcome = worker.call(payload, timeout_seconds)
        finally:
            if worker.broken or not worker.alive():
                # Killed on a deadline or dead: replace it now so the next call finds one starting.
                worker.kill()
                self._replace(worker)
            else:
                self._release(worker)
        return outcome

    def _acquire(self) -> _Worker | None:
        with self._cond:
            while not self._closed:
                if self._idle:
                    return self._idle.pop()
                if self._count < self.max_workers:
                    self._count += 1
                    break
                self._cond.wait()
            else:
                return None
        try:
            worker = _Worker(self.handler, self.warmup)
        except OSError:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            return None
        with self._cond:
            self._all.add(worker)
        return worker

    def _release(self, worker: _Worker) -> None:
        with self._cond:
            if self._closed:
                worker.kill()
                return
            self._idle.append(worker)
            self._cond.notify()

    def _replace(self, dead: _Worker) -> None:
        with self._cond:
            self.restarts += 1
            self._all.discard(dead)
            if self._closed:
                self._count -= 1
                return
            try:
                worker = _Worker(self.handler, self.warmup)
                self._idle.append(worker)
                self._all.add(worker)
            except OSError:
                self._count -= 1
            self._cond.notify()

    def close(self) -> None:
        """Kill every worker, idle or busy (a busy caller then gets an "error" outcome)."""
        with self._cond:
            self._closed = True
            idle, busy = self._idle, [w for w in self._all if w not in self._idle]
            self._idle = []
            self._cond.notify_all()
        for worker in idle:
            worker.kill()
        for worker in busy:
            worker.process.kill()  # its caller's thread sees the pipe close and cleans up


_POOLS: dict[tuple[str, str | None, int], WorkerPool] = {}
_POOLS_LOCK = threading.Lock()


def shared_pool(handler: str, max_workers: int = 2, warmup: str | None = None) -> WorkerPool:
    """This process's pool for (handler, warmup, max_workers), created on first use."""
    key = (handler, warmup, max_workers)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = WorkerPool(handler, max_workers, warmup)
        return pool


def close_pools() -> None:
    """Kill every worker of this process's pools (runs at exit)."""
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for pool in pools:
        pool.close()


def _forget_pools_in_child() -> None:
    # A forked child shares the parent's pipes; it must start its own workers, never kill the parent's.
    global _POOLS_LOCK
    _POOLS.clear()
    _POOLS_LOCK = threading.Lock()


atexit.register(close_pools)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools_in_child)


def _load(spec: str) -> Callable[..., Any]:
    module_name, _, attribute = spec.partition(":")
    return getattr(importlib.import_module(module_name), attribute)  # type: ignore[no-any-return]


def _limit_memory() -> None:
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = WORKER_MEMORY_BYTES if hard == resource.RLIM_INFINITY else min(WORKER_MEMORY_BYTES, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    except (ValueError, OSError):  # pragma: no cover - a platform without these limits
        pass


def _limit_cpu_for_next_request() -> None:
    try:
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF)
        hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
        soft = int(usage.ru_utime + usage.ru_stime) + 1 + WORKER_CPU_SECONDS_PER_REQUEST
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    except (ImportError, ValueError, OSError):  # pragma: no cover - not POSIX
        pass


def _serve(handler_spec: str, warmup_spec: str | None) -> None:
    """The worker's loop: one JSON request per stdin line, one JSON reply per stdout line."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    protocol = os.fdopen(os.dup(1), "wb", buffering=0)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    sys.stdout = open(os.devnull, "w")  # lives as long as the process
    _limit_memory()
    handler = _load(handler_spec)
    if warmup_spec:
        _load(warmup_spec)()
    protocol.write(b'{"ready": true}\n')
    for raw in sys.stdin.buffer:
        _limit_cpu_for_next_request()
        try:
            reply = handler(json.loads(raw))
            if not isinstance(reply, dict):
                reply = {"error": f"handler returned {type(reply).__name__}, expected dict"}
        except Exception as error:  # the reply says what went wrong; the worker lives on
            reply = {"error": f"{type(error).__name__}: {str(error)[:200]}"}
        try:
            data = json.dumps(reply).encode("ascii")
        except (TypeError, ValueError) as error:
            data = json.dumps({"error": f"unserialisable reply: {error}"}).encode("ascii")
        protocol.write(data + b"\n")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        raise SystemExit("usage: python -m rlvr.tasks._timeout HANDLER [WARMUP]  (module:function)")
    _serve(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else None)
