"""One batch-inference run, wired in Python: :class:`BatchRun` reads the user's switches once, opens the run (output
folder, inputs, what earlier runs finished), makes its outputs and handlers, and computes the run's fingerprint from
the very arguments it is given.

``configs/inference.json`` declares the switches as values and hands each of them to ``batch`` (this class); the
transforms that also read one (the threshold, the review image, the lung sides) get the same config value. The
fingerprint (:attr:`BatchRun.settings`) is every argument except those in :data:`OUTPUT_NEUTRAL_ARGS`: a new argument
enters it unless it is declared neutral with a reason, and ``tests/test_fingerprint.py`` checks that every option of
the batch configs reaches this class or is declared output-neutral (:data:`scripts.batch.fingerprint.OUTPUT_NEUTRAL`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from ignite.engine import Engine

from ..acceleration import resolve_precision
from ..io.dicom import RADIOGRAPH_MODALITIES
from ..lung_shape import SHAPE_MODEL_FILE
from ..settings import amp_enabled, is_on
from .case_outputs import CaseOutputs
from .case_writer import CaseWriter
from .dicomweb import DicomwebSource
from .fingerprint import file_signature
from .progress import FileProgressBar
from .report import RunReport
from .run_start import open_run

__all__ = ["BatchRun", "OUTPUT_NEUTRAL_ARGS", "fingerprinted_args"]

# the arguments of BatchRun that change no output of an input, and why; every other argument is in the fingerprint
OUTPUT_NEUTRAL_ARGS = {
    "dataset_dir": "which inputs: each input is a row of its own, keyed by its file",
    "output_dir": "the folder the fingerprint belongs to",
    "datalist_key": "which inputs (from a datalist)",
    "modalities": "which inputs are segmented: decided again at discovery in every run",
    "device": "where the network runs; what changes its arithmetic (precision, amp) is in the fingerprint",
    "overwrite": "segments every input again, whatever the fingerprint",
    "dicomweb": "which inputs (from a PACS); whether SEGs are stored there is in the fingerprint as store_seg",
    "writer_postprocessing": "the post-processing, whose options are arguments of their own",
    "write_processes": "parallelism",
    "software_version": "the bundle version named in new SEG objects; the weights' signature says what changed",
    "shard": "how a run is divided between processes",
}


class BatchRun:
    """A batch-inference run over a folder, a datalist or a DICOMweb server.

    Args:
        dataset_dir: input folder (searched recursively) or datalist JSON file.
        output_dir: output folder (masks, SEGs, overlays, ``report.csv``, ``records/``).
        ckpt_path: the weights: their file signature is in the fingerprint, so new weights segment again.
        model_settings: the model's input settings (``models/model.json``: input size, padding crop, classes).
        crop_padding: the padding crop as the run applies it (``None``: the model's own).
        device: the device the network runs on.
        datalist_key: list to read from a datalist JSON file.
        overwrite: segment every input again, even those a previous run finished.
        dicomweb: ``{"url", "studies", "query", "store"}``: a DICOMweb server to take the inputs from instead of
            ``dataset_dir``, the studies and QIDO query that select them, and whether SEGs are stored back there.
        modalities: the DICOM modalities segmented (others are ``skipped``).
        precision: the network's precision (``auto`` resolved for ``device``).
        amp: CUDA autocast of the MONAI engine (``"auto"``: where CUDA is; see :func:`scripts.settings.amp_enabled`).
        threshold: lung probability threshold.
        keep_components: largest lung components kept.
        min_component_fraction: smallest component kept, as a share of the largest.
        label_sides: masks label right (1) and left (2) lungs.
        write_png: write ``<name>_mask.png``.
        write_nifti: write ``<name>_mask.nii.gz``.
        write_seg: write a DICOM SEG for DICOM inputs.
        write_overlay: write ``<name>_overlay.jpg``.
        write_rle: write ``masks_rle.csv.gz``, every mask run-length encoded.
        overlay_size: long side of the overlay in pixels.
        seg_series_number: Series Number of the SEG objects.
        quality: quality-flag bounds ``{"lung_fraction_range", "max_side_ratio", "review_below"}``.
        writer_postprocessing: transforms from the engine's output to the mask on the input's grid, run by the writer
            processes.
        write_processes: writer processes (0: in the main process).
        software_version: the bundle version, named in the SEG objects.
        shard: a torchrun run: rank 0 opens the run and every rank gets a share of the inputs.
        frontal_chest_only: skip inputs that are not frontal chest radiographs, by their header (the reader's
            check) and their lungs (:class:`scripts.transforms.postprocess.LungShapeScored`); off, everything is
            segmented and a doubtful lung shape flagged.

    Switches (``overwrite``, ``write_*``, ``label_sides``, ``amp``, ``dicomweb``'s ``store``) are read with
    :func:`scripts.settings.is_on`, so ``--write_seg false`` typed on the command line turns an output off.
    """

    def __init__(
        self,
        dataset_dir: str,
        output_dir: str,
        ckpt_path: str,
        model_settings: dict,
        crop_padding: bool | str | None = None,
        device: torch.device | str = "cpu",
        datalist_key: str | None = None,
        overwrite: bool | str = False,
        dicomweb: dict | None = None,
        modalities: Sequence[str] = RADIOGRAPH_MODALITIES,
        precision: str = "auto",
        amp: bool | str = "auto",
        threshold: float = 0.5,
        keep_components: int = 2,
        min_component_fraction: float = 0.0,
        label_sides: bool | str = False,
        write_png: bool | str = True,
        write_nifti: bool | str = False,
        write_seg: bool | str = True,
        write_overlay: bool | str = True,
        write_rle: bool | str = False,
        overlay_size: int = 1024,
        seg_series_number: int = 900,
        quality: dict | None = None,
        writer_postprocessing: Callable | None = None,
        write_processes: int = 2,
        software_version: str = "unknown",
        shard: bool | str = False,
        frontal_chest_only: bool | str = True,
    ) -> None:
        device = torch.device(device)
        dicomweb = dict(dicomweb or {})
        quality = dict(quality or {})  # CaseOutputs' own defaults for any bound not given
        self.write_processes = int(write_processes)
        self.overwrite = is_on(overwrite)
        # the fingerprint: every argument that changes what is written for an input, as the run uses it
        self.settings = {
            "weights": file_signature(ckpt_path),
            **{key: model_settings[key] for key in sorted(model_settings)},
            "crop_padding": is_on(model_settings.get("crop_padding", True) if crop_padding is None else crop_padding),
            "precision": resolve_precision(precision, device),
            "amp": amp_enabled(amp) and device.type == "cuda",
            "threshold": float(threshold),
            "keep_components": int(keep_components),
            "min_component_fraction": float(min_component_fraction),
            "label_sides": is_on(label_sides),
            "outputs": {
                "png": is_on(write_png),
                "nifti": is_on(write_nifti),
                "seg": is_on(write_seg),
                "overlay": is_on(write_overlay),
                "rle": is_on(write_rle),
                "overlay_size": int(overlay_size),
                "seg_series_number": int(seg_series_number),
                "store_seg": is_on(dicomweb.get("store", True)) and bool(dicomweb.get("url")),
            },
            "quality": dict(sorted(quality.items())),
            "frontal_chest_only": is_on(frontal_chest_only),
            "lung_shape_model": file_signature(str(SHAPE_MODEL_FILE)),
        }
        outputs = self.settings["outputs"]
        self.pacs = (
            DicomwebSource(
                dicomweb["url"],
                study_uids=dicomweb.get("studies", ()),
                query=dicomweb.get("query"),
                modalities=modalities,
                store=outputs["store_seg"] and outputs["seg"],
            )
            if dicomweb.get("url")
            else None
        )
        self.report: RunReport = open_run(
            dataset_dir,
            output_dir,
            overwrite=self.overwrite,
            settings=self.settings,
            datalist_key=datalist_key,
            shard=is_on(shard),
            write_rle=outputs["rle"],
            pacs=self.pacs,
        )
        self.outputs = CaseOutputs(
            self.report.output_dir,
            postprocessing=writer_postprocessing,
            write_png=outputs["png"],
            write_nifti=outputs["nifti"],
            write_seg=outputs["seg"],
            write_overlay=outputs["overlay"],
            write_rle=outputs["rle"],
            label_sides=self.settings["label_sides"],
            **quality,
            seg_series_number=outputs["seg_series_number"],
            software_version=software_version,
            uid_seed=self.report.settings_id,
            frontal_chest_only=self.settings["frontal_chest_only"],
            pacs=self.pacs,
        )

    @property
    def pending(self) -> list[dict]:
        """The inputs this process segments: those no earlier run finished with the same fingerprint (its share of
        them in a sharded run)."""
        return self.report.pending

    def handlers(self) -> list:
        """The evaluator's handlers: the writer of each input's outputs and rows, and the progress bar."""
        return [CaseWriter(self.report, self.outputs, processes=self.write_processes), FileProgressBar(self.report)]

    def run(self, evaluator: Engine) -> None:
        """Segment the pending inputs (nothing to do when every input is reused)."""
        if self.pending:
            evaluator.run()

    def finish(self, exit: bool = True) -> int:
        """Write the report and return the exit status (see :meth:`RunReport.finish`)."""
        return self.report.finish(exit=exit)

    def exit(self) -> None:
        """End the process with the run's exit status when it is not 0 (a sharded run, after leaving the group)."""
        self.report.exit()


def fingerprinted_args() -> list[str]:
    """The arguments of :class:`BatchRun` that enter the fingerprint: all but :data:`OUTPUT_NEUTRAL_ARGS`."""
    names = [n for n in inspect.signature(BatchRun).parameters if n != "self"]
    return [n for n in names if n not in OUTPUT_NEUTRAL_ARGS]
