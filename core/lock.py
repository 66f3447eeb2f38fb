"""One writer per stage and work folder: an advisory lock a second writer meets with a clear
message naming the holder.

Two ``diffsci train`` on one ``--workdir`` would otherwise both run, the last writer's weights
would win and ``metrics.jsonl`` would interleave both runs; a SIGKILLed Snakemake leaves its
job running, so ``--unlock`` and a rerun start exactly this race. The lock is ``flock(2)`` on
``<workdir>/.<stage>.lock``: the kernel releases it when the holder dies however it dies, so a
lock file a dead holder leaves behind is stale by construction and the next writer takes it
(flock works across processes of one host and on NFSv4 through byte-range locks; on file
systems without locking it fails with a clear error rather than silently not locking). The
file holds the holder's pid, host, command and start time, for the message only.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["WorkdirBusy", "stage_lock"]


class WorkdirBusy(OSError):
    """Another live process holds the stage's lock on this work folder."""


def _holder(path: Path) -> str:
    try:
        h = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    return f"pid {h.get('pid')} on {h.get('host')} since {h.get('started')} ({h.get('command')})"


@contextmanager
def stage_lock(workdir: str | os.PathLike, stage: str) -> Iterator[Path]:
    """Hold ``<workdir>/.<stage>.lock`` while the body runs.

    Raises
    ------
    WorkdirBusy
        A live process holds it; the message names the holder and the way forward.
    """
    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    path = root / f".{stage}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirBusy(
                f"{root}: the {stage} stage is already running here ({_holder(path)}); wait "
                f"for it to finish or stop it, or use another work folder"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(sys.argv)[:300],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock; the file stays (its content is only informative)
