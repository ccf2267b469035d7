"""The start of a batch run (:func:`open_run`): prepare the output folder, discover the inputs and make the run's
:class:`~scripts.batch.report.RunReport`; in a sharded run rank 0 does this and sends the report to every rank.
"""

from __future__ import annotations

import os

import torch.distributed as dist

from ..io.discovery import discover_inputs
from ..io.errors import RunFault
from ..io.files import remove_temporary_files
from ..process_group import get_rank, get_world_size, init_distributed
from .dicomweb import PACS_FOLDER, DicomwebSource
from .fingerprint import settings_id
from .folder_lock import claim_output_folder
from .records import RECORDS_FOLDER
from .report import RunReport
from .writers import seg_sop_uid

__all__ = ["open_run"]


def open_run(
    dataset_dir: str,
    output_dir: str,
    overwrite: bool = False,
    settings: dict | None = None,
    datalist_key: str | None = None,
    shard: bool = False,
    write_rle: bool = False,
    pacs: DicomwebSource | None = None,
) -> RunReport:
    """Start a batch-inference run: prepare the output folder (created, writable, the temporary files a killed run
    left removed), discover the inputs, and return the run's :class:`RunReport`.

    Args:
        dataset_dir: input folder (searched recursively) or datalist JSON file.
        output_dir: output folder; also holds ``records/``, ``report.csv`` and ``report.json``.
        overwrite: segment every input again, even those a previous run finished.
        settings: everything that changes the outputs (see :class:`RunReport`).
        datalist_key: list to read from a datalist JSON file (default ``"testing"``, else ``"test"``).
        shard: join the process group torchrun set up (:func:`scripts.process_group.init_distributed`); rank 0
            prepares the folder, discovers the inputs and decides what to reuse, and every rank gets its share of the
            pending inputs (see the module docstring). The output folder must be shared by all ranks (all nodes).
        write_rle: also write all masks into one archive (see :class:`RunReport`).
        pacs: a DICOMweb server to take the inputs from instead of ``dataset_dir``: they are retrieved into the output
            folder's ``pacs_inputs/`` (see :class:`scripts.batch.dicomweb.DicomwebSource`).

    Raises:
        RunFault: the output folder cannot be created or written, or another batch run is writing to it.
        ValueError: the output folder is the input folder.
        FileNotFoundError: no input folder, or no file in it.
        RuntimeError: ``shard`` without torchrun.
    """
    if shard:
        init_distributed()
    rank, world = get_rank(), get_world_size()
    report = [None]
    if rank == 0:
        try:
            report[0] = _prepare_run(dataset_dir, output_dir, overwrite, settings, datalist_key, write_rle, pacs)
        except (Exception, RunFault) as exc:  # every rank stops with it, rather than wait for a report
            report[0] = exc
    if world > 1:
        dist.broadcast_object_list(report, src=0)
    if isinstance(report[0], BaseException):
        raise report[0]
    report = report[0]
    if world > 1:
        report.use_shard(rank, world)
    return report


def _prepare_run(
    dataset_dir: str,
    output_dir: str,
    overwrite: bool,
    settings: dict | None,
    datalist_key: str | None,
    write_rle: bool,
    pacs: DicomwebSource | None = None,
) -> RunReport:
    output_dir = os.path.abspath(os.path.expanduser(str(output_dir)))
    if pacs is not None and dataset_dir:
        raise ValueError("give one source: --dataset_dir or --dicomweb#url, not both")
    if dataset_dir and os.path.realpath(os.path.expanduser(str(dataset_dir))) == os.path.realpath(output_dir):
        raise ValueError(
            f"output_dir is the input folder ({output_dir}): choose another --output_dir, or a sub-folder of the input "
            "(it is then not searched for inputs)"
        )
    records = os.path.join(output_dir, RECORDS_FOLDER)
    try:
        os.makedirs(records, exist_ok=True)
        if not os.access(records, os.W_OK | os.X_OK):
            raise PermissionError(f"no permission to write in {records}")
    except OSError as exc:
        raise RunFault(
            f"the output folder {output_dir} cannot be written ({exc.strerror or exc}); choose another --output_dir"
        ) from exc
    claim_output_folder(output_dir)  # before anything in the folder is touched: another run may be writing there
    remove_temporary_files(output_dir)
    if pacs is not None:  # this run's SEG of an instance has a known UID: one in the PACS already means it is done
        seed = settings_id(settings)
        inputs = pacs.discover(os.path.join(output_dir, PACS_FOLDER), seg_uid=lambda sop: seg_sop_uid(sop, seed))
    else:
        inputs = discover_inputs(dataset_dir, exclude=[output_dir], datalist_key=datalist_key)
    return RunReport(inputs, output_dir, settings, overwrite, write_rle)
