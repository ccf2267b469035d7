"""From one segmented item to its files and report values: the full-resolution mask, its measurements, the mask PNG,
NIfTI, DICOM SEG, run-length code and overlay.

:class:`CaseOutputs` is the work that follows the network for one input. It holds only settings and the mask
post-processing (a MONAI ``Compose``), so it can be copied into worker processes
(:class:`scripts.batch.case_writer.CaseWriter` runs it there), where the full-resolution work runs on every core
instead of one thread of the engine's process. Each call gets the item as the engine's batch holds it (the network's
input with its MONAI meta data and its record of applied transforms, the review image) and the network's prediction
on the network's grid, and returns the fields of the input's report row.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
from monai.engines.utils import engine_apply_transform

from ..io.dicom import header_from_json, safe_get
from ..io.errors import RunFault, describe_error, is_input_failure
from ..io.radiograph_view import LATERAL_VIEWS, NOT_A_FRONTAL_CHEST, taken_as
from ..lung_shape import DOUBTFUL, NOT_A_CHEST
from ..lungs import measure_lungs, patient_right_on_image_left
from ..transforms.image import review_pixels
from .dicomweb import DicomwebSource
from .fault_tolerance import run_fault
from .rle import mask_runs
from .writers import inside, write_dicom_seg, write_mask_nifti, write_mask_png, write_overlay

__all__ = ["CaseOutputs", "CaseOutputError", "CaseSkippedError"]

logger = logging.getLogger(__name__)


class CaseOutputError(Exception):
    """One input's outputs could not be made; the message (``"<step>: <reason>"``) is its report row's reason."""


class CaseSkippedError(CaseOutputError):
    """One input is not what the bundle segments (the frontal-chest check): no outputs, a ``skipped`` row.

    Args:
        reason: the row's reason.
        taken_as: the row's ``taken_as``.
    """

    def __init__(self, reason: str, taken_as: str) -> None:
        super().__init__(reason, taken_as)
        self.reason, self.taken_as = reason, taken_as

    def __str__(self) -> str:
        return self.reason


class CaseOutputs:
    """Post-process one input's prediction to its full-resolution mask, measure it and write its outputs.

    In the output folder, under the item's safe name (``output_stem``, see :func:`scripts.batch.writers.output_stem`):

    * ``<name>_mask.png``: the lung mask at the input's Rows x Columns, 0/255 (``write_png``);
    * ``<name>_mask.nii.gz``: the label mask (0/1, or 0/1/2 with sides) with the input's affine (``write_nifti``);
    * ``<name>_seg.dcm``: a DICOM Segmentation referencing the source image (DICOM inputs, ``write_seg``);
    * ``<name>_overlay.jpg``: the review image with the lung contour (``write_overlay``).

    Any failure of one input raises :class:`CaseOutputError` naming the step (``"writing the DICOM SEG: ..."``) after
    the files already written for it are removed; a fault of the run (a full disk, an unwritable output folder, see
    :func:`scripts.batch.fault_tolerance.run_fault`) raises :class:`~scripts.io.errors.RunFault`.

    Args:
        output_dir: the run's output folder.
        postprocessing: the transforms from the network's output to the mask on the input's grid, applied to the item
            and its output together as MONAI's engines do (``None``: the prediction is that mask already).
        write_png: write the mask PNG.
        write_nifti: write the mask NIfTI.
        write_seg: write a DICOM SEG for DICOM inputs.
        write_overlay: write the overlay JPEG (needs ``overlay_key`` in the item).
        write_rle: return the mask run-length encoded (``_rle``, :func:`scripts.batch.rle.mask_runs`), for the run's
            mask archive.
        label_sides: the mask holds right (1) / left (2) lung labels rather than 0/1.
        lung_fraction_range: quality flag bounds for lung pixels / image pixels.
        max_side_ratio: quality flag bound for the ratio of the two lungs' areas.
        review_below: a ``qc_score`` (the item's ``qc_key``) below this flags the mask ``review``.
        seg_series_number: Series Number of the DICOM SEG objects.
        software_version: the bundle version, written into the SEG objects.
        uid_seed: text mixed into the SEG's UIDs (the run's settings), so a changed model gives new UIDs.
        image_key: item key of the (pre-processed) image, whose meta data describe the input.
        pred_key: output key of the prediction; after ``postprocessing``, ``(1, x, y)`` on the input's grid.
        overlay_key: item key of the review image (:class:`scripts.transforms.image.ReviewImaged`).
        qc_key: key of the mask quality score after ``postprocessing``
            (:class:`scripts.transforms.postprocess.KeepLungProbabilityd`); reported as ``qc_score`` when present.
        shape_key: key of the lung shape's distance after ``postprocessing``
            (:class:`scripts.transforms.postprocess.LungShapeScored`, with its ``_verdict`` and ``_evidence``);
            reported as ``lung_shape`` when present.
        frontal_chest_only: skip an input whose lungs say it is no frontal chest (:class:`CaseSkippedError`, before any
            output is written); off, it is segmented and flagged ``lung_shape``. A doubtful shape is flagged either
            way. The header's evidence was checked by the reader (:mod:`scripts.io.radiograph_view`).
        pacs: the DICOMweb server the inputs came from: each SEG is stored there too (when its ``store`` is on); one
            it refuses makes the input's row failed.
    """

    def __init__(
        self,
        output_dir: str,
        postprocessing: Callable | None = None,
        write_png: bool = True,
        write_nifti: bool = False,
        write_seg: bool = True,
        write_overlay: bool = True,
        write_rle: bool = False,
        label_sides: bool = False,
        lung_fraction_range: tuple[float, float] = (0.05, 0.6),
        max_side_ratio: float = 2.5,
        review_below: float = 0.97,
        seg_series_number: int = 900,
        software_version: str = "unknown",
        uid_seed: str = "",
        image_key: str = "image",
        pred_key: str = "pred",
        overlay_key: str = "overlay_image",
        qc_key: str = "qc_score",
        shape_key: str = "lung_shape",
        frontal_chest_only: bool = True,
        pacs: DicomwebSource | None = None,
    ) -> None:
        self.output_dir = output_dir
        self.postprocessing = postprocessing
        self.write_png, self.write_nifti, self.write_seg, self.write_overlay = (
            write_png,
            write_nifti,
            write_seg,
            write_overlay,
        )
        self.write_rle = write_rle
        self.label_sides = label_sides
        self.lung_fraction_range = tuple(lung_fraction_range)
        self.max_side_ratio = max_side_ratio
        self.review_below = float(review_below)
        self.seg_series_number = seg_series_number
        self.software_version = str(software_version)
        self.uid_seed = str(uid_seed)
        self.image_key, self.pred_key, self.overlay_key, self.qc_key = image_key, pred_key, overlay_key, qc_key
        self.shape_key, self.frontal_chest_only = shape_key, bool(frontal_chest_only)
        self.pacs = pacs if pacs is not None and pacs.store else None

    def __call__(self, item: dict, output: dict, kind: str = "") -> dict:
        """The report fields of one input (``status`` ``ok``, sizes, measurements, output paths relative to the
        output folder), its files written.

        Args:
            item: the input's batch item (``output_stem``, ``image_key`` with meta data, ``overlay_key``).
            output: the engine's output for it (``pred_key``).
            kind: the input's kind from discovery (``"dicom"`` gets a SEG).

        Raises:
            CaseOutputError: this input failed (the message names the step); nothing is left written for it.
            RunFault: the run cannot go on.
        """
        written: list[str] = []
        try:
            return self._make(item, output, kind, written)
        except (CaseOutputError, RunFault):
            for path in written:  # no half-written case: a failed row lists no outputs, and none are left
                if os.path.exists(path):
                    os.remove(path)
            raise

    @contextmanager
    def _step(self, name: str) -> Iterator[None]:
        """Name the step in the error of one input; let a fault of the run through (it stops the run)."""
        try:
            yield
        except (CaseOutputError, RunFault):
            raise
        except BaseException as exc:
            if not is_input_failure(exc):
                raise
            fault = run_fault(exc, self.output_dir)
            if fault is not None:
                raise fault from exc
            raise CaseOutputError(f"{name}: {describe_error(exc)}") from exc

    def _make(self, item: dict, output: dict, kind: str, written: list[str]) -> dict:
        if self.postprocessing is not None:
            with self._step("post-processing"):
                item, output = engine_apply_transform(item, output, self.postprocessing)
        with self._step("reading the prediction"):
            meta = item[self.image_key].meta
            pred = output[self.pred_key]
            mask_xy = np.asarray(pred[0].detach().cpu()).astype(np.uint8)
            expected = tuple(int(v) for v in np.asarray(meta["spatial_shape"]).ravel())
            if mask_xy.shape != expected:
                raise ValueError(f"prediction of shape {mask_xy.shape} does not match the input's {expected}")
            mask = np.ascontiguousarray(mask_xy.T)  # (rows, columns), as DICOM and PIL store images; one copy here
            # rather than a strided one in every writer
            spacing = tuple(float(v) for v in np.asarray(meta["pixel_spacing"]).ravel())
            spacing = spacing if len(spacing) == 2 and all(math.isfinite(v) and v > 0 for v in spacing) else None
        with self._step("reading the DICOM header"):  # as the reader passed it on: the file is not read again
            header = header_from_json(str(meta.get("dicom_header", "")))
        with self._step("measuring the lungs"):
            standard = patient_right_on_image_left(str(meta.get("patient_orientation", "")))
            measures = measure_lungs(mask, spacing, standard, self.lung_fraction_range, self.max_side_ratio)
            if str(safe_get(header, "ViewPosition", "") or "").strip().upper() in LATERAL_VIEWS:
                measures["quality_flags"].append("lateral_view")
            score = output.get(self.qc_key, item.get(self.qc_key))  # MONAI's engines put a key transforms add there
            measures["qc_score"] = None if score is None else round(float(score), 4)
            if score is not None and score < self.review_below:
                measures["quality_flags"].append("review")
        with self._step("checking for a frontal chest"):
            measures["taken_as"] = self._taken_as(item, output, str(meta.get("view_evidence", "")), measures)

        stem, out = item["output_stem"], self.output_dir
        paths, seg_uid = {}, None
        if self.write_png:
            with self._step("writing the mask PNG"):
                paths["mask_png"] = _remember(written, write_mask_png(inside(out, stem + "_mask.png"), mask))
        if self.write_nifti:
            with self._step("writing the mask NIfTI"):
                affine = np.asarray(pred.affine if hasattr(pred, "affine") else np.eye(4), np.float64)
                path = write_mask_nifti(inside(out, stem + "_mask.nii.gz"), mask, affine)
                paths["mask_nifti"] = _remember(written, path)
        if self.write_seg and kind == "dicom":
            with self._step("writing the DICOM SEG"):
                path, seg_uid = write_dicom_seg(
                    inside(out, stem + "_seg.dcm"),
                    header,
                    mask,
                    pixel_spacing=spacing,
                    label_sides=self.label_sides,
                    uid_seed=self.uid_seed,
                    series_number=self.seg_series_number,
                    software_version=self.software_version,
                )
                paths["seg_dicom"] = _remember(written, path)
            if self.pacs is not None:
                with self._step("storing the SEG in the PACS"):
                    self.pacs.store_seg(path)
        if self.write_overlay and self.overlay_key in item:
            with self._step("writing the overlay"):
                review = review_pixels(item[self.overlay_key])
                paths["overlay"] = _remember(written, write_overlay(inside(out, stem + "_overlay.jpg"), review, mask))
        encoded = {}  # for the run's mask archive: kept in the row's record, not in the report
        if self.write_rle:
            with self._step("run-length encoding the mask"):
                encoded["_rle"] = mask_runs(mask, self.label_sides)
        return dict(
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
            **encoded,
        )

    def _taken_as(self, item: dict, output: dict, header: str, measures: dict) -> str:
        """What the input is taken for (the report's ``taken_as``), from the header's evidence (checked by the
        reader) and the lungs' (:class:`scripts.transforms.postprocess.LungShapeScored`); raises
        :class:`CaseSkippedError` for an input the lungs say is no frontal chest, when the check is on."""

        def found(suffix: str = ""):
            key = self.shape_key + suffix
            return output.get(key, item.get(key))

        verdict, image = found("_verdict"), found("_evidence") or ""
        measures["lung_shape"] = found()
        if verdict == NOT_A_CHEST and self.frontal_chest_only:
            raise CaseSkippedError(f"{NOT_A_FRONTAL_CHEST}: {image}", taken_as("not a frontal chest", header, image))
        if verdict in (DOUBTFUL, NOT_A_CHEST):  # a chest whose mask is doubtful: flagged, and for review
            flags = measures["quality_flags"]
            flags += [flag for flag in ("lung_shape", "review") if flag not in flags]
        decision = "frontal chest" if self.frontal_chest_only else "not checked (frontal_chest_only off)"
        return taken_as(decision + (", doubtful" if verdict in (DOUBTFUL, NOT_A_CHEST) else ""), header, image)


def _remember(written: list[str], path: str) -> str:
    written.append(path)
    return path
