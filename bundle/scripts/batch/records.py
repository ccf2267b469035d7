"""The run's record store: one JSON line per finished input, appended durably to ``records/rank-<rank>.jsonl`` in the
output folder (one file per process of a sharded run, so that no two processes write one file; one line per input
rather than one file per input, so that an archive of 100,000 radiographs does not leave 100,000 small files), and
read back for resumed runs, the merge of a sharded run and the mask archive.

A line cut short by a kill is skipped when read, and the next line starts on a line of its own.
"""

from __future__ import annotations

import json
import os
import time

__all__ = ["RECORDS_FOLDER", "RecordFile", "read_records", "read_record_at"]

RECORDS_FOLDER = "records"


class RecordFile:
    """This process's records file, ``<records_dir>/rank-<rank>.jsonl``, opened at the first line appended.

    Args:
        records_dir: the run's records folder.
        rank: this process's rank (0 for a run of one process).
    """

    def __init__(self, records_dir: str, rank: int = 0) -> None:
        self.path = os.path.join(records_dir, f"rank-{rank}.jsonl")
        self._file = None
        self._synced = 0.0

    def append(self, line: str) -> None:
        """Append one record line: flushed at once (it survives the process being killed), synced to the disk at
        least every 2 s (it survives a power cut)."""
        if self._file is None:
            self._file = open(self.path, "a+", encoding="utf-8")
            if self._file.tell():  # a killed process may have left its last line unfinished: start a new one
                self._file.seek(self._file.tell() - 1)
                if self._file.read(1) != "\n":
                    self._file.write("\n")
        self._file.write(line + "\n")
        self._file.flush()
        if time.monotonic() - self._synced > 2.0:
            os.fsync(self._file.fileno())
            self._synced = time.monotonic()

    def close(self) -> None:
        """Sync and close the file (nothing when no line was appended)."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None


def read_records(records_dir: str) -> dict[str, dict]:
    """The last stored record of every input key in the ``*.jsonl`` files of ``records_dir`` (lines that do not
    parse, such as the last line of a process killed while writing it, are skipped).

    A record's run-length masks (``_rle``, large) are not kept in memory: ``_at`` says where its line is
    (``[file name, byte offset]``) for :func:`read_record_at`.
    """
    latest: dict[str, dict] = {}
    try:
        names = sorted(n for n in os.listdir(records_dir) if n.endswith(".jsonl"))
    except OSError:
        return latest
    for name in names:
        try:
            f = open(os.path.join(records_dir, name), "rb")
        except OSError:
            continue
        with f:
            offset = 0
            for line in f:
                at, offset = offset, offset + len(line)
                try:
                    stored = json.loads(line)
                    key, written = stored["_key"], stored["_written"]
                except (ValueError, TypeError, KeyError):
                    continue
                if key not in latest or written >= latest[key]["_written"]:
                    if stored.pop("_rle", None) is not None:
                        stored["_at"] = [name, at]
                    latest[key] = stored
    return latest


def read_record_at(records_dir: str, at: list) -> dict:
    """The whole record (run-length masks included) at ``at`` (see :func:`read_records`)."""
    with open(os.path.join(records_dir, at[0]), "rb") as f:
        f.seek(at[1])
        return json.loads(f.readline())
