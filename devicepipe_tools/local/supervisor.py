"""The local stack's processes: started so that they die with the supervisor, restarted when they die alone, and
recorded so that `local down` ends whatever is left of them.

- Dying with the supervisor. Each child asks the kernel (``prctl(PR_SET_PDEATHSIG)``, between fork and exec) for
  its ``death_signal`` when the supervisor dies, however it dies (`kill -9` included). The alternative, each child
  polling its parent's pid, needs code of ours in every child (redis-server and postgres run none) and leaves
  orphans for a poll interval. The kernel sends the signal when the *thread* that started the child ends, so
  children start from the supervisor's main thread only (``Supervisor.start`` checks).
- Restarts. A child that exits is started again after a pause that doubles with each exit in a row that came
  within ``settle_s`` of its start (0.5 s after one that ran longer, then 1, 2, 4, 8 s); the fifth such exit in a
  row gives it up, with one line in stack.log and its reason in the state file (``local status``). The stack
  stays up without it: moto's in-memory state, every record still in the streams included, lives in the
  supervisor, and stopping would lose it; the other processes keep working.
- Identities. A process is recorded as its pid and its start time (``/proc/<pid>/stat``), so that a pid the system
  gave to another process after ours ended is never taken for ours, nor signalled.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devicepipe.retry import Backoff

_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded now: nothing may be loaded between fork and exec
#: Pauses before a restart: 0.5 s doubling with each quick exit in a row; the fifth quick exit gives the child up.
RESTARTS = Backoff(base_s=0.5, cap_s=8.0, max_attempts=5)
#: A child that ran this long started fine: its exit starts a new count.
SETTLE_S = 10.0


def _no_jitter() -> float:
    return 1.0  # one process restarting: no crowd of clients to spread out


@dataclass(frozen=True)
class Proc:
    """A process as the state file records it. ``start`` (clock ticks after boot) tells it apart from a later
    process that got the same pid; None in state files of stacks that recorded pids only."""

    name: str
    pid: int
    start: int | None

    @classmethod
    def of(cls, name: str, pid: int) -> Proc:
        return cls(name, pid, start_time(pid) or -1)  # -1: already gone when recorded

    def alive(self) -> bool:
        started = start_time(self.pid)
        return started is not None and self.start in (None, started)


def _stat(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` from its third field on (state, ppid, pgrp, session, ...); None without the process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(") ", 1)[1].split()


def start_time(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks after boot; None when there is none, or only its zombie."""
    fields = _stat(pid)
    return None if fields is None or fields[0] == "Z" else int(fields[19])


def group_of(pid: int) -> int | None:
    fields = _stat(pid)
    return None if fields is None else int(fields[2])


def group_members(pgid: int) -> list[Proc]:
    """The live processes of process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(Proc("", int(entry.name), int(fields[19])))
    return members


def end(procs: Iterable[Proc], group: int | None = None, grace_s: float = 10.0) -> list[Proc]:
    """End ``procs`` that still live and, with ``group``, every other member of that process group, as long as one
    of ``procs`` is still in it (the group is then ours: the kernel does not reuse a group's id while it has
    members): SIGTERM, then SIGKILL to what is left after ``grace_s``. Returns the processes that were alive."""
    live = [p for p in procs if p.alive()]
    if group is not None and any(group_of(p.pid) == group for p in live):
        known = {p.pid for p in live}
        live += [p for p in group_members(group) if p.pid not in known]
    _signal(live, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(p.alive() for p in live) and time.monotonic() < deadline:
        time.sleep(0.05)
    _signal([p for p in live if p.alive()], signal.SIGKILL)
    return live


def _signal(procs: Iterable[Proc], sig: signal.Signals) -> None:
    for p in procs:
        with contextlib.suppress(ProcessLookupError):  # ended meanwhile
            os.kill(p.pid, sig)


@dataclass(frozen=True)
class ChildSpec:
    """How to start one of the stack's processes, again after it died."""

    name: str
    command: list[str]
    env: dict[str, str] | None = None  # None: the supervisor's
    cwd: Path | None = None
    log: Path | None = None  # its output, appended; None: the supervisor's (stack.log)
    popen: dict[str, Any] = field(default_factory=dict)  # more of Popen's arguments (user, group, ...)
    stop_signal: signal.Signals = signal.SIGTERM  # a clean stop
    death_signal: signal.Signals = signal.SIGKILL  # from the kernel, when the supervisor dies


Spawn = Callable[[ChildSpec], subprocess.Popen[bytes]]


def launch(spec: ChildSpec, preexec: Callable[[], None] | None = None) -> subprocess.Popen[bytes]:
    """Start ``spec``'s process, unsupervised (``Supervisor.start`` for a supervised one)."""
    log = spec.log.open("ab") if spec.log else None
    try:
        return subprocess.Popen(
            spec.command,
            env=spec.env,
            cwd=spec.cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT if log else None,
            preexec_fn=preexec,  # noqa: PLW1509 - two syscalls, no lock taken: safe beside threads
            **spec.popen,
        )
    finally:
        if log:
            log.close()


def _die_with(parent: int, sig: signal.Signals) -> Callable[[], None]:
    """Runs in the child between fork and exec (after any change of user, which would clear it)."""

    def preexec() -> None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the prctl: no signal will come
            os._exit(1)

    return preexec


@dataclass
class Child:
    spec: ChildSpec
    proc: subprocess.Popen[bytes] | None = None  # None while it waits for its restart, or was given up
    start: int = -1  # the process's start time (``Proc.start``)
    started: float = 0.0  # monotonic
    restarts: int = 0
    quick_exits: int = 0  # exits in a row, each within ``settle_s`` of its start
    due: float = 0.0  # when to start it again
    gave_up: str = ""

    def record(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "pid": self.proc.pid if self.proc else None,
            "start": self.start,
            "restarts": self.restarts,
            "gave_up": self.gave_up,
        }


def _say(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)


class Supervisor:
    """Starts children (``start``), restarts those that exit (``poll``, from the caller's loop) and stops them all
    (``stop``). ``held`` (name -> epoch seconds) keeps a child down until then (``stack.hold``)."""

    def __init__(
        self,
        say: Callable[[str], None] = _say,
        backoff: Backoff = RESTARTS,
        settle_s: float = SETTLE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.say = say
        self.backoff = backoff
        self.settle_s = settle_s
        self.clock = clock
        self.children: dict[str, Child] = {}

    def start(self, spec: ChildSpec) -> subprocess.Popen[bytes]:
        """Start ``spec``'s process, watched from now on (a ``Spawn``)."""
        if spec.name in self.children:
            raise ValueError(f"{spec.name} is started already")
        child = self.children[spec.name] = Child(spec)
        return self._run(child)

    def _run(self, child: Child) -> subprocess.Popen[bytes]:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("children start from the main thread: the kernel ends them when their thread ends")
        child.proc = launch(child.spec, _die_with(os.getpid(), child.spec.death_signal))
        child.start, child.started = start_time(child.proc.pid) or -1, self.clock()
        return child.proc

    def poll(self, held: dict[str, float] | None = None) -> bool:
        """Note the children that exited, and start again those whose pause (and hold) is over; whether any
        changed."""
        changed = False
        for child in self.children.values():
            if child.proc is not None and (code := child.proc.poll()) is not None:
                self._ended(child, f"pid {child.proc.pid} {describe(code)}")
                changed = True
            elif child.proc is None and not child.gave_up and self._due(child, held or {}):
                self._restart(child)
                changed = True
        return changed

    def _due(self, child: Child, held: dict[str, float]) -> bool:
        return self.clock() >= child.due and time.time() >= held.get(child.spec.name, 0.0)

    def _restart(self, child: Child) -> None:
        child.restarts += 1
        try:
            proc = self._run(child)
        except OSError as exc:  # as a start that failed at once: the same pauses, the same limit
            child.started = self.clock()
            self._ended(child, f"could not start: {exc}")
            return
        self.say(f"restarted {child.spec.name} (pid {proc.pid}; restart {child.restarts})")

    def _ended(self, child: Child, what: str) -> None:
        ran = self.clock() - child.started
        child.quick_exits = child.quick_exits + 1 if ran < self.settle_s else 0
        child.proc = None
        how = f"{what} after {ran:.1f} s"
        if child.quick_exits >= self.backoff.max_attempts:
            child.gave_up = (
                f"ended {child.quick_exits} times in a row within {self.settle_s:.0f} s of starting (last: {how})"
            )
            self.say(f"GAVE UP on {child.spec.name}: it {child.gave_up}; the stack runs on without it")
            return
        pause = self.backoff.delay(child.quick_exits, rng=_no_jitter)
        child.due = self.clock() + pause
        self.say(f"{child.spec.name}: {how}; restarting it in {pause:.1f} s")

    def gave_up(self) -> dict[str, str]:
        return {name: c.gave_up for name, c in self.children.items() if c.gave_up}

    def processes(self) -> list[dict[str, Any]]:
        """Every child as the state file records it (no pid while it waits for a restart)."""
        return [c.record() for c in self.children.values()]

    def stop(self, grace_s: float = 15.0) -> None:
        """Stop every child (its stop signal, the last started first; SIGKILL after ``grace_s``), and forget them."""
        running = [(c.proc, c.spec.stop_signal) for c in self.children.values() if c.proc and c.proc.poll() is None]
        for proc, sig in reversed(running):
            proc.send_signal(sig)
        deadline = time.monotonic() + grace_s
        for proc, _ in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.children.clear()


def describe(returncode: int) -> str:
    """How a process ended, from its Popen return code."""
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exited with code {returncode}"


def recorded(state: dict[str, Any]) -> list[Proc]:
    """The processes a state file records: the supervisor's children (not the supervisor)."""
    return [Proc(p["name"], p["pid"], p.get("start")) for p in state.get("processes", []) if p.get("pid")]
