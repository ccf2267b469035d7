"""One batch run per output folder at a time.

Two runs writing into one folder would both find the same inputs pending, segment them twice, remove each other's
temporary files as leftovers of a killed run, and write one report over the other. :func:`claim_output_folder` takes
an exclusive ``flock`` on ``<output_dir>/records/run.lock`` (beside the run's records, not among its outputs) before a
run touches the folder, and writes who holds it into the file; a second run stops with a message that names the first
(process id, host, start time, command line). The kernel releases the lock when the holding process (and the workers
it forked) end, however they end, so a killed run never leaves the folder locked. Where the file system has no locks,
the run goes on with a warning.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import socket
import sys

from ..io.errors import RunFault

__all__ = ["LOCK_NAME", "claim_output_folder"]

logger = logging.getLogger(__name__)
LOCK_NAME = os.path.join("records", "run.lock")
_held: dict[str, object] = {}  # output folder -> the open lock file, kept for the life of the process


def claim_output_folder(output_dir: str) -> None:
    """Hold ``output_dir`` (whose ``records/`` folder exists) for this process (again, for a process that holds it
    already). Forked children (data loader workers, writer processes) share the lock and end with the run.

    Raises:
        RunFault: another process holds it, naming that process, or the lock file cannot be opened.
    """
    output_dir = os.path.abspath(output_dir)
    if output_dir in _held:
        return
    path = os.path.join(output_dir, LOCK_NAME)
    try:
        lock = open(path, "a+")
    except OSError as exc:
        raise RunFault(f"cannot open {path} to hold the output folder ({exc.strerror or exc})") from exc
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
    except OSError as exc:  # a file system without locks (some network and FUSE mounts): run, unguarded
        logger.warning("%s cannot be locked (%s): make sure no other run writes to this folder", path, exc)
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
