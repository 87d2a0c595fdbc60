"""Independent jobs in spawned processes, one process per job, so that a job that dies ends only itself.

``concurrent.futures.ProcessPoolExecutor`` marks the whole pool broken when one worker is killed
(by hand, or by the kernel's out-of-memory killer) and terminates every sibling mid-run: killing
one run of ``metaplastic suite --jobs 2`` cost the other its progress since its last checkpoint,
with a traceback. Here each job owns its process and a pipe for its result; a job that dies is
reported by name, its siblings go on, and the caller decides what a failure means.
"""

from __future__ import annotations

import os
import signal
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from typing import Any

from metaplastic.meta.worker_guard import die_with_parent


@dataclass(frozen=True)
class Job:
    key: str
    fn: Callable[..., Any]  # module-level, so that a spawned process can import it
    args: tuple[Any, ...] = ()


@dataclass(frozen=True)
class JobOutcome:
    """What one job left: its result, the exception it raised, or how its process ended without either."""

    key: str
    result: Any = None
    error: BaseException | None = None
    died: str | None = None  # e.g. "killed by signal 9 (SIGKILL)", when the process ended without a word

    @property
    def ok(self) -> bool:
        return self.error is None and self.died is None


def _child(conn: Connection, parent: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    die_with_parent(parent)
    try:
        message: tuple[Any, ...] = ("result", fn(*args))
    except BaseException as e:  # noqa: BLE001 - every failure goes back to the parent, by name
        e.add_note(f"in a job process:\n{traceback.format_exc()}")
        message = ("error", e)
    try:
        conn.send(message)
    except Exception as e:  # an unpicklable result or exception
        conn.send(("error", RuntimeError(f"job result could not be sent back: {type(e).__name__}: {e}")))
    conn.close()


def _how_it_ended(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {-exitcode} ({name})"
    return f"ended with exit code {exitcode} before reporting a result"


def run_jobs(jobs: Sequence[Job], workers: int, on_outcome: Callable[[JobOutcome], None] | None = None,
             stop_on_error: bool = True) -> dict[str, JobOutcome]:
    """Run ``jobs``, at most ``workers`` at a time, in spawned processes; return every started job's outcome.

    A job that raises stops new jobs from starting when ``stop_on_error`` (the ones in flight
    finish); a job whose process dies never stops the others. Outcomes arrive in ``on_outcome``
    as jobs end; the returned dict is in the order of ``jobs`` and holds only jobs that started.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    context = get_context("spawn")
    queue = list(jobs)
    running: dict[str, tuple[Any, Connection]] = {}
    outcomes: dict[str, JobOutcome] = {}
    stopped = False
    while queue or running:
        while queue and not stopped and len(running) < workers:
            job = queue.pop(0)
            receive, send = context.Pipe(duplex=False)
            process = context.Process(target=_child, args=(send, os.getpid(), job.fn, job.args), daemon=False)
            process.start()
            send.close()  # the child holds the only writing end: EOF on ours means it is gone
            running[job.key] = (process, receive)
        if not running:
            break
        wait([conn for _, conn in running.values()] + [process.sentinel for process, _ in running.values()])
        for key, (process, conn) in list(running.items()):
            if conn.poll():
                try:
                    kind, payload = conn.recv()
                except EOFError:
                    kind, payload = None, None
            elif process.is_alive():
                continue
            else:
                kind, payload = None, None
            process.join()
            conn.close()
            del running[key]
            if kind == "result":
                outcome = JobOutcome(key, result=payload)
            elif kind == "error":
                outcome = JobOutcome(key, error=payload)
                stopped = stopped or stop_on_error
            else:
                outcome = JobOutcome(key, died=_how_it_ended(process.exitcode))
            outcomes[key] = outcome
            if on_outcome is not None:
                on_outcome(outcome)
    return {job.key: outcomes[job.key] for job in jobs if job.key in outcomes}
