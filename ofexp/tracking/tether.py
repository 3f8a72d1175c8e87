"""Servers that end with the process that started them, even when that process is SIGKILLed.

A tracking server outlived its starter: `ofexp ui` SIGKILLed left its MLflow server
serving on the port, and pytest killed by a timeout left its fixture's `mlflow server`
and workers running. `start_tethered` runs a command under a small tether process (this
file, run by path: the standard library only, so it starts in milliseconds). The tether
leads a new process group, which holds the command and everything the command starts,
and waits on a pipe whose only writer is the starter. The kernel closes that pipe when
the starter ends, however it ends, and the tether then SIGKILLs the whole group.

Linux's PR_SET_PDEATHSIG was the other candidate; it reaches one process only (not the
workers a server forks), fires when the starting *thread* ends, and is Linux-only, while
a pipe's end-of-file is none of these.

A stop (SIGTERM, SIGINT or SIGHUP to the tether) is passed to the group; whatever is left
after the grace period is SIGKILLed. When the command ends by itself, the rest of its
group goes with it. The starter's copy of the pipe is not inherited by the processes it
starts later (Python opens pipes non-inheritable), so only the starter keeps the group alive.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

STOP_GRACE_S = 1.5  # a stopped server gets this long to close its connections, then SIGKILL
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@dataclass
class Tethered:
    """A command running under its tether: `process` is the tether, the leader of the group."""

    process: subprocess.Popen
    lifeline: int  # the pipe's write end: while it is open, the group may live

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> int | None:
        return self.process.poll()

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def stop(self, timeout_s: float = STOP_GRACE_S + 2.0) -> None:
        """Stop the group (SIGTERM, SIGKILL after the tether's grace) and wait until it has ended."""
        try:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=timeout_s)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        self.kill()

    def kill(self) -> None:
        """SIGKILL the whole group now and let go of the lifeline."""
        _kill_group(self.process.pid)
        self.process.wait()
        if self.lifeline >= 0:
            os.close(self.lifeline)
            self.lifeline = -1
        _wait_group_gone(self.process.pid)


def start_tethered(command: list[str], *, grace_s: float = STOP_GRACE_S, **popen_kwargs) -> Tethered:
    """Start `command` under a tether (see the module's docstring); popen_kwargs as for Popen."""
    read_end, write_end = os.pipe()  # both non-inheritable; the tether gets the read end by pass_fds
    try:
        process = subprocess.Popen(
            [sys.executable, "-S", str(Path(__file__).resolve()), str(read_end), str(grace_s), "--", *command],
            pass_fds=(read_end,), start_new_session=True, **popen_kwargs)
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    return Tethered(process, write_end)


def _kill_group(pgid: int, signum: int = signal.SIGKILL) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_group_gone(pgid: int, timeout_s: float = 5.0) -> None:
    """Wait until no process of group `pgid` is left (SIGKILLed ones take a moment to go)."""
    deadline = time.monotonic() + timeout_s
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.02)


def group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs (zombies, which hold no port, do not count)."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        try:
            os.killpg(pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False
    for stat in proc.glob("[0-9]*/stat"):
        try:
            # pid (comm) state ppid pgrp ...: comm may hold spaces, so split after its ')'
            state, _ppid, pgrp = stat.read_text().rpartition(")")[2].split()[:3]
        except OSError:
            continue  # it ended while we looked
        if int(pgrp) == pgid and state != "Z":
            return True
    return False


def _tether(lifeline: int, grace_s: float, command: list[str]) -> None:
    """The tether's own loop: run `command`, and end the group when it should end."""
    stops: list[int] = []
    for signum in _STOP_SIGNALS:
        signal.signal(signum, lambda received, _frame: stops.append(received))
    child = subprocess.Popen(command)
    deadline = None
    while child.poll() is None:
        if stops and deadline is None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group's SIGTERM is not for the tether
            _kill_group(0, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
        if deadline is not None and time.monotonic() > deadline:
            break
        ready, _, _ = select.select([lifeline], [], [], 0.1)
        if ready and not os.read(lifeline, 64):
            break  # end of file: the starter has ended
    _kill_group(0)  # the command's own children, and the tether last


if __name__ == "__main__":
    # tether.py LIFELINE_FD GRACE_S -- COMMAND...
    _tether(int(sys.argv[1]), float(sys.argv[2]), sys.argv[4:])
