"""Child processes of the local environment, recorded so that `down` stops exactly them.

Each component runs detached in its own session with its log in the state directory. Its pid,
command line and start time (from /proc) go into ``<state>/pids/<name>.json``; a later command
treats the record as live only if a process with that pid still has that start time, so a
recycled pid is never mistaken for ours and never killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime) counts from after the parenthesised command name.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return fields[19]


@dataclass(frozen=True)
class Record:
    name: str
    pid: int
    start_time: str
    argv: list[str]
    log: str

    def alive(self) -> bool:
        return _start_time(self.pid) == self.start_time


class Supervisor:
    """Starts, finds and stops the named child processes of one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.pid_dir = state_dir / "pids"
        self.log_dir = state_dir / "logs"

    def _path(self, name: str) -> Path:
        return self.pid_dir / f"{name}.json"

    def get(self, name: str) -> Record | None:
        try:
            data = json.loads(self._path(name).read_text())
        except (OSError, ValueError):
            return None
        return Record(**data)

    def running(self, name: str) -> Record | None:
        rec = self.get(name)
        return rec if rec is not None and rec.alive() else None

    def records(self) -> list[Record]:
        if not self.pid_dir.is_dir():
            return []
        recs = [self.get(p.stem) for p in sorted(self.pid_dir.glob("*.json"))]
        return [r for r in recs if r is not None]

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Record:
        """Start `argv` detached unless a live process is already recorded under `name`."""
        existing = self.running(name)
        if existing is not None:
            return existing
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        started = None
        for _ in range(100):
            started = _start_time(proc.pid)
            if started is not None:
                break
            time.sleep(0.01)
        rec = Record(name, proc.pid, started or "", list(argv), str(log_path))
        self._path(name).write_text(json.dumps(rec.__dict__))
        return rec

    def stop(self, name: str, *, timeout: float = 15.0) -> bool:
        """SIGTERM, then SIGKILL after `timeout`; returns whether a live process was stopped."""
        rec = self.get(name)
        if rec is None:
            return False
        was_alive = rec.alive()
        if was_alive:
            _signal(rec.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while rec.alive() and time.monotonic() < deadline:
                _reap(rec.pid)
                time.sleep(0.05)
            if rec.alive():
                _signal(rec.pid, signal.SIGKILL)
                while rec.alive():
                    _reap(rec.pid)
                    time.sleep(0.02)
        self._path(name).unlink(missing_ok=True)
        return was_alive

    def kill(self, name: str) -> None:
        """SIGKILL without waiting for a clean exit (used to simulate crashes)."""
        rec = self.running(name)
        if rec is not None:
            _signal(rec.pid, signal.SIGKILL)
            while rec.alive():
                _reap(rec.pid)
                time.sleep(0.02)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reap(pid: int) -> None:
    """Collect the exit status if the process is our own child (avoids zombies in tests)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
