"""One batch run per output folder at a time.

Two runs writing into one folder would both find the same inputs pending, segment them twice, remove each other's
temporary files as leftovers of a killed run, and write one report over the other. :func:`claim_output_folder` takes
an exclusive ``flock`` on ``<output_dir>/records/run.lock`` (beside the run's records, not among its outputs) before a
run touches the folder, and writes who holds it into the file; a second run stops with a message that names the first
(process id, host, start time, command line). The kernel releases the lock when the holding process ends, however it
ends, so a killed run never leaves the folder locked. (``flock`` on a network file system locks for one host only.)
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import sys

from ..io.errors import RunFault

__all__ = ["LOCK_NAME", "claim_output_folder"]

LOCK_NAME = os.path.join("records", "run.lock")
_held: dict[str, object] = {}  # output folder -> the open lock file, kept for the life of the process


def claim_output_folder(output_dir: str) -> None:
    """Hold ``output_dir`` (whose ``records/`` folder exists) for this process (again, for a process that holds it
    already).

    Raises:
        RunFault: another process holds it, naming that process.
    """
    output_dir = os.path.abspath(output_dir)
    if output_dir in _held:
        return
    lock = open(os.path.join(output_dir, LOCK_NAME), "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "a process that has not written its name yet"
        lock.close()
        raise RunFault(
            f"the output folder {output_dir} is in use by another batch run ({holder}): wait for it to finish, or "
            "choose another --output_dir"
        ) from None
    lock.truncate(0)
    lock.write(
        json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": datetime.datetime.now().isoformat(timespec="seconds"),
                "command": " ".join(sys.argv),
            }
        )
        + "\n"
    )
    lock.flush()
    _held[output_dir] = lock
