"""Groups of local worker processes: `tuner run`'s workers and `tuner worker --slots K`'s trial loops.

Each child is an ordinary `tuner worker` (its own budget lock, heartbeat and reaper), so K slots on one GPU are K
workers of the study's one exact budget. The storage URL reaches the children through their environment, never
their argv (which `ps` shows to everyone). The children run in their own session: a signal reaches them once,
forwarded by the parent (SIGTERM/SIGINT as they are, SIGHUP as SIGTERM), not a second time from the terminal,
which a worker would take for "exit at once". A child killed by a signal the parent did not send (the kernel's
out-of-memory killer, a stray `kill -9`) is replaced by a new one, at most RESTARTS times per slot; its trial is
failed and retried by the reaper like any dead worker's. The parent exits with their worst code.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import IO

FORWARDED = {signal.SIGTERM: signal.SIGTERM, signal.SIGINT: signal.SIGINT, signal.SIGHUP: signal.SIGTERM}
RESTARTS = 3  # replacements per slot for children killed by a signal we did not send
_log = logging.getLogger(__name__)


def worker_argv(study: str | None, device_args: Sequence[str], *, threads: int | None = None,
                   db_retry_seconds: float | None = None, verbose: bool = False) -> list[str]:
    """`tuner worker` for one slot (the URL goes in the environment as TUNER_STORAGE)."""
    cmd = [sys.executable, "-m", "tuner", "worker", *(["--study", study] if study else []), *device_args]
    if threads:
        cmd += ["--threads", str(threads)]
    if db_retry_seconds is not None:
        cmd += ["--db-retry-seconds", f"{db_retry_seconds:g}"]
    return cmd + (["--verbose"] if verbose else [])


def exit_code(returncode: int) -> int:
    """A child's code as a shell shows it: killed by signal N -> 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


class WorkerGroup:
    """Start the commands; forward signals to them; wait for all of them."""

    def __init__(self, commands: list[list[str]], url: str, *, log: IO | None = None,
                 on_signal: Callable[[int], None] = lambda signum: None):
        self.env, self.log, self.commands = {**os.environ, "TUNER_STORAGE": url}, log, commands
        self.on_signal = on_signal
        self.signals = 0
        self.restarts = [0] * len(commands)
        # installed before the first child starts: a signal must never end this process and orphan them
        self._previous = {s: signal.signal(s, self.forward) for s in FORWARDED}
        self.procs = [self._start(cmd) for cmd in commands]

    def _start(self, cmd: list[str]) -> subprocess.Popen:
        return subprocess.Popen(cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT if self.log else None,
                                start_new_session=True)

    def forward(self, signum: int, frame: object = None) -> None:
        self.signals += 1
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(FORWARDED[signum])
        self.on_signal(signum)

    def running(self) -> bool:
        return any(proc.poll() is None for proc in self.procs)

    def wait(self) -> list[int]:
        """Wait for every child, forwarding the signals this process gets and replacing a child killed by a
        signal we did not send; returns their exit codes."""
        try:
            while True:
                for i, proc in enumerate(self.procs):
                    if proc.poll() is not None and proc.returncode < 0 and not self.signals \
                            and self.restarts[i] < RESTARTS:
                        self.restarts[i] += 1
                        _log.warning("worker pid %d was killed by %s (not by tuner); starting a new one "
                                     "(%d of %d); its trial is retried", proc.pid,
                                     signal.Signals(-proc.returncode).name, self.restarts[i], RESTARTS)
                        self.procs[i] = self._start(self.commands[i])
                if not self.running():
                    break
                time.sleep(0.2)
            return [exit_code(proc.wait()) for proc in self.procs]
        finally:
            for s, handler in self._previous.items():
                signal.signal(s, handler)


def worst(codes: list[int]) -> int:
    """The group's exit code: the highest of its children's (0 when all succeeded)."""
    return max(codes, default=0)
