"""Store locks: one writing run per store (:class:`RunLock`, naming its holder) and the writers' shared lock.

Both are advisory ``flock`` locks in files inside the store directory, so the OS drops them when
their process dies: a killed run never leaves a lock behind that blocks anyone.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from lightning_emo.data.integrity import FeatureStoreError
from lightning_emo.utils import log

LOCK_FILE = ".lock"
RUN_LOCK_FILE = ".run.lock"


class _StoreLock:
    """An advisory ``flock`` on ``STORE/.lock``: writers hold it shared, cleanup needs it exclusive (non-blocking).

    The OS drops the lock of a killed process, so a dead run never blocks cleanup. Where
    ``fcntl`` is missing (Windows) locking is a no-op and counts as acquired.
    """

    def __init__(self, store_path: Path, exclusive: bool):
        self.fd: int | None = None
        self.acquired = True
        try:
            import fcntl
        except ImportError:
            return
        self.fd = os.open(store_path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB if exclusive else fcntl.LOCK_SH)
        except OSError:
            self.acquired = False
            self.release()

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


class StoreBusyError(FeatureStoreError):
    """Another run is writing this store (the message names it: pid, host, start time, command)."""


class RunLock:
    """One writing run per store: an exclusive ``flock`` on ``STORE/.run.lock`` that records its holder.

    The holder's pid, host, start time and command are written into the file, so a second run
    can say who holds it. The OS drops the lock when the holder dies, so a stale file left by a
    killed run never blocks anyone (its contents are only read while the lock is held). With
    ``wait`` the second run blocks until the first finishes (then resumes after its clips);
    otherwise it is refused (:class:`StoreBusyError`). Where ``fcntl`` is missing (Windows) it is a no-op.
    """

    def __init__(self, store_path: str | os.PathLike, command: str = "", wait: bool = False,
                 poll_seconds: float = 1.0):
        self.path = Path(store_path) / RUN_LOCK_FILE
        self.fd: int | None = None
        try:
            import fcntl
        except ImportError:
            return
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        announced = False
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                holder = self.holder()
                if not wait:
                    os.close(self.fd)
                    self.fd = None
                    raise StoreBusyError(f"feature store {store_path} is being written by another run ({holder}); "
                                         "nothing was done. Wait for it to finish and run the same command again "
                                         "(it skips the clips already written), or pass --wait to wait for it.")
                if not announced:
                    log.info(f"feature store {store_path}: waiting for the run that holds it ({holder})")
                    announced = True
                time.sleep(poll_seconds)
        import socket

        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command}
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, (json.dumps(info) + "\n").encode(), 0)

    def holder(self) -> str:
        """Who holds the lock, from the file: ``pid 123 on host, started ..., command``."""
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            info = {}
        if not info:
            return "a process that has not recorded itself yet"
        text = f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}"
        return text + (f": {info['command']}" if info.get("command") else "")

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # no holder any more
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


__all__ = ["LOCK_FILE", "RUN_LOCK_FILE", "RunLock", "StoreBusyError"]
