"""The ignite handler that writes each input's outputs and report row as soon as its batch is done.

Attached to the inference engine (:class:`scripts.batch.fault_tolerance.FaultTolerantEvaluator`) at
``ITERATION_COMPLETED``; for every item it writes, in the output folder, under the item's safe name
(:func:`scripts.batch.writers.output_stem`):

* ``<name>_mask.png``: the lung mask at the input's Rows x Columns, 0/255 (every input);
* ``<name>_mask.nii.gz``: the label mask (0/1, or 0/1/2 with sides) with the input's affine (``write_nifti``);
* ``<name>_seg.dcm``: a DICOM Segmentation referencing the source image (DICOM inputs, ``write_seg``);
* ``<name>_overlay.png``: the image, at most ``overlay_size`` pixels on its long side, with the lung contour
  (``write_overlay``);

and then records the row (areas, quality flags, output paths) with :meth:`scripts.batch.report.RunReport.record`.

Any failure while writing one item makes that item's row ``failed`` with the step that failed (``"writing the DICOM
SEG: ..."``), removes the files already written for it, and the run goes on. Only a fault of the run itself (a full
disk, a read-only or unwritable output folder, see :func:`scripts.batch.fault_tolerance.run_fault`) stops the run.
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
from ignite.engine import Engine, Events

from ..io.dicom import header_from_json, safe_get
from ..io.errors import describe_error, is_input_failure
from ..lungs import measure_lungs, patient_right_on_image_left
from .fault_tolerance import ERROR_KEY, STATUS_KEY, RunFault, run_fault
from .report import RunReport
from .writers import inside, write_dicom_seg, write_mask_nifti, write_mask_png, write_overlay_png

__all__ = ["CaseWriter"]

logger = logging.getLogger(__name__)
_LATERAL_VIEWS = {"LL", "RL", "LLD", "RLD", "LAT", "LATERAL"}


class CaseWriter:
    """Write every finished item's outputs and report row (see the module docstring).

    Args:
        report: the run's :class:`~scripts.batch.report.RunReport` (output folder, rows, records).
        write_png: write the mask PNG.
        write_nifti: write the mask NIfTI.
        write_seg: write a DICOM SEG for DICOM inputs.
        write_overlay: write the overlay PNG (needs ``overlay_key`` in the batch).
        label_sides: the prediction holds right (1) / left (2) lung labels rather than 0/1.
        lung_fraction_range: quality flag bounds for lung pixels / image pixels.
        max_side_ratio: quality flag bound for the ratio of the two lungs' areas.
        seg_series_number: Series Number of the DICOM SEG objects.
        software_version: the bundle version, written into the SEG objects.
        image_key: batch key of the (pre-processed) image, whose meta data describe the input.
        pred_key: output key of the post-processed prediction, ``(1, x, y)`` on the input's grid.
        overlay_key: batch key of the review image (``(1, S, S)``, padded with -1 at the end).
        write_threads: background threads that write the outputs while the engine goes on with the next batch (0:
            write in the engine's thread). At most two batches per thread wait, so memory stays bounded; all writes
            are finished when the engine completes.
    """

    def __init__(
        self,
        report: RunReport,
        write_png: bool = True,
        write_nifti: bool = False,
        write_seg: bool = True,
        write_overlay: bool = True,
        label_sides: bool = False,
        lung_fraction_range: tuple[float, float] = (0.05, 0.6),
        max_side_ratio: float = 2.5,
        seg_series_number: int = 900,
        software_version: str = "unknown",
        image_key: str = "image",
        pred_key: str = "pred",
        overlay_key: str = "overlay_image",
        write_threads: int = 1,
    ) -> None:
        self.report = report
        self.write_png, self.write_nifti, self.write_seg, self.write_overlay = (
            write_png,
            write_nifti,
            write_seg,
            write_overlay,
        )
        self.label_sides = label_sides
        self.lung_fraction_range = tuple(lung_fraction_range)
        self.max_side_ratio = max_side_ratio
        self.seg_series_number = seg_series_number
        self.software_version = str(software_version)
        self.image_key, self.pred_key, self.overlay_key = image_key, pred_key, overlay_key
        self.write_threads = max(0, int(write_threads))
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future] = deque()
        self._fault: RunFault | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self.wait)

    def __call__(self, engine: Engine) -> None:
        cases = list(zip(engine.state.batch, engine.state.output, strict=True))
        if not self.write_threads:
            self._write_cases(cases)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.write_threads, thread_name_prefix="case-writer")
        while len(self._pending) >= 2 * self.write_threads:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._write_cases, cases))

    def wait(self, engine: Engine | None = None) -> None:
        """Block until every submitted case is written (raises what a write could not handle, e.g. a full disk)."""
        while self._pending:
            self._pending.popleft().result()

    def _write_cases(self, cases: list[tuple[dict, dict]]) -> None:
        for item, output in cases:
            if self._fault is not None:  # the run is stopping: the cases still queued are left for the re-run
                return
            try:
                self.write_case(item, output)
            except RunFault as fault:
                self._fault = fault
                raise

    def write_case(self, item: dict, output: dict) -> None:
        """Write one item's outputs and record its row (``failed``, with the step and the reason, on any error)."""
        key = item["case_key"]
        if ERROR_KEY in output:
            row = self.report.base_row(key, status=output.get(STATUS_KEY, "failed"), reason=output[ERROR_KEY])
        else:
            written: list[str] = []
            try:
                row = self._write_outputs(key, item, output, written)
            except (_StepFailed, RunFault) as exc:
                for path in written:  # no half-written case: a failed row lists no outputs, and none are left
                    if os.path.exists(path):
                        os.remove(path)
                if isinstance(exc, RunFault):
                    raise
                logger.warning("%s: %s", self.report.entry(key)["input"], exc)
                row = self.report.base_row(key, status="failed", reason=str(exc))
        try:
            with self._step("recording the report row"):
                self.report.record(key, row)
        except _StepFailed as exc:  # e.g. a value the record cannot hold: the input is still accounted for
            self.report.record(key, self.report.base_row(key, status="failed", reason=str(exc)))

    @contextmanager
    def _step(self, name: str) -> Iterator[None]:
        """Name the step in the error of one item; let a fault of the run through (it stops the run)."""
        try:
            yield
        except BaseException as exc:
            if not is_input_failure(exc):
                raise
            fault = run_fault(exc, self.report.output_dir)
            if fault is not None:
                raise fault from exc
            raise _StepFailed(f"{name}: {describe_error(exc)}") from exc

    def _write_outputs(self, key: str, item: dict, output: dict, written: list[str]) -> dict:
        entry = self.report.entry(key)
        with self._step("reading the prediction"):
            meta = item[self.image_key].meta
            pred = output[self.pred_key]
            mask_xy = np.asarray(pred[0].detach().cpu()).astype(np.uint8)
            expected = tuple(int(v) for v in np.asarray(meta["spatial_shape"]).ravel())
            if mask_xy.shape != expected:
                raise ValueError(f"prediction of shape {mask_xy.shape} does not match the input's {expected}")
            mask = mask_xy.T  # (rows, columns), as DICOM and PIL store images
            spacing = tuple(float(v) for v in np.asarray(meta["pixel_spacing"]).ravel())
            spacing = spacing if len(spacing) == 2 and all(math.isfinite(v) and v > 0 for v in spacing) else None
        with self._step("reading the DICOM header"):  # as the reader passed it on: the file is not read again
            header = header_from_json(str(meta.get("dicom_header", "")))
        with self._step("measuring the lungs"):
            standard = patient_right_on_image_left(str(meta.get("patient_orientation", "")))
            measures = measure_lungs(mask, spacing, standard, self.lung_fraction_range, self.max_side_ratio)
            if str(safe_get(header, "ViewPosition", "") or "").strip().upper() in _LATERAL_VIEWS:
                measures["quality_flags"].append("lateral_view")

        stem, out = item["output_stem"], self.report.output_dir
        paths, seg_uid = {}, None
        if self.write_png:
            with self._step("writing the mask PNG"):
                paths["mask_png"] = _remember(written, write_mask_png(inside(out, stem + "_mask.png"), mask))
        if self.write_nifti:
            with self._step("writing the mask NIfTI"):
                affine = np.asarray(pred.affine if hasattr(pred, "affine") else np.eye(4), np.float64)
                path = write_mask_nifti(inside(out, stem + "_mask.nii.gz"), mask, affine)
                paths["mask_nifti"] = _remember(written, path)
        if self.write_seg and entry["kind"] == "dicom":
            with self._step("writing the DICOM SEG"):
                path, seg_uid = write_dicom_seg(
                    inside(out, stem + "_seg.dcm"),
                    header,
                    mask,
                    pixel_spacing=spacing,
                    label_sides=self.label_sides,
                    uid_seed=self.report.settings_id,
                    series_number=self.seg_series_number,
                    software_version=self.software_version,
                )
                paths["seg_dicom"] = _remember(written, path)
        if self.write_overlay and self.overlay_key in item:
            with self._step("writing the overlay"):
                review = np.asarray(item[self.overlay_key][0].detach().cpu(), np.float32)
                valid = review >= 0  # the review image is padded with -1 up to a square
                review = review[: int(valid.any(axis=1).sum()), : int(valid.any(axis=0).sum())].T
                path = write_overlay_png(inside(out, stem + "_overlay.png"), review, mask)
                paths["overlay_png"] = _remember(written, path)
        return self.report.base_row(
            key,
            status="ok",
            reason="",
            rows=int(mask.shape[0]),
            columns=int(mask.shape[1]),
            pixel_spacing_mm=f"{spacing[0]:g}\\{spacing[1]:g}" if spacing else None,
            spacing_source=str(meta.get("spacing_source", "")) or None,
            sop_instance_uid=str(safe_get(header, "SOPInstanceUID", "") or "")[:64] or None,
            seg_sop_instance_uid=seg_uid,
            pixel_processing=str(meta.get("pixel_processing", "")) or None,
            **measures,
            **{k: os.path.relpath(v, out) for k, v in paths.items()},
        )


class _StepFailed(Exception):
    """One item's write failed at a named step (the message is the report row's reason)."""


def _remember(written: list[str], path: str) -> str:
    written.append(path)
    return path
