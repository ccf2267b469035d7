"""The fingerprint of a batch run's settings: a later run into the same output folder reuses a finished input's row
and outputs only when its fingerprint is the same (:class:`scripts.batch.report.RunReport`).

The fingerprint is made from ``settings`` in ``configs/inference.json``: every option that changes what is written for
an input (the weights, the model's input settings, the precision, the post-processing, which outputs and how). Every
other option of the batch configs is declared here, in :data:`OUTPUT_NEUTRAL`, with the reason it changes no output;
``tests/test_fingerprint.py`` fails for an option that is in neither, so a new option cannot be forgotten.
"""

from __future__ import annotations

import hashlib
import json
import os

__all__ = ["OUTPUT_NEUTRAL", "file_signature", "settings_id"]

# options of inference.json, evaluate.json and multi_gpu_inference.json that are not in the fingerprint, and why
OUTPUT_NEUTRAL = {
    "bundle_root": "where the bundle is",
    "dataset_dir": "which inputs: each input is a row of its own, keyed by its file",
    "dicomweb_url": "which inputs (from a PACS)",
    "dicomweb_studies": "which inputs (from a PACS)",
    "dicomweb_query": "which inputs (from a PACS)",
    "datalist_key": "which inputs (from a datalist)",
    "modalities": "which inputs are segmented: decided again at discovery in every run",
    "max_image_pixels": "refuses a file before decoding; the masks of a file it admits do not depend on it",
    "output_dir": "the folder the fingerprint belongs to",
    "overwrite": "segments every input again, whatever the fingerprint",
    "model_settings": "read from the weights' model.json: its values are in the fingerprint",
    "channels_last": "memory layout: the same arithmetic",
    "batch_size": "how many inputs the network sees at once: each is segmented alone",
    "cpu_cores": "parallelism",
    "num_workers": "parallelism",
    "write_processes": "parallelism",
    "network_threads": "parallelism",
    "datalist": "derived: the inputs still to segment",
    "network": "derived from network_def and the weights",
    "fast_network": "derived from network, device and precision",
    "image_reader": "derived from max_image_pixels and modalities",
    "postprocessing_transforms": "derived: the post-processing, whose options are in the fingerprint",
    "synthetic_dir": "which inputs (evaluation without data)",
    "split": "which inputs (evaluation)",
    "split_file": "which inputs (evaluation)",
    "metric_output": "evaluation's own files, written anew by every evaluation",
    "run_report#shard": "how a run is divided between processes",
    "displayable_configs": "MONAI Label's result file type; batch runs do not read it",
}


def file_signature(path: str) -> str:
    """``"<absolute path>|<size>|<mtime_ns>"`` of a file (``"<path>|missing"``): changes when the file is replaced."""
    path = os.path.abspath(str(path))
    try:
        stat = os.stat(path)
    except OSError:
        return f"{path}|missing"
    return f"{path}|{stat.st_size}|{stat.st_mtime_ns}"


def settings_id(settings: dict | None) -> str:
    """A short fingerprint of a run's settings: rows and SEGs are reused only by runs with the same one."""
    canonical = json.dumps(json.loads(json.dumps(settings or {}, sort_keys=True, default=str)), sort_keys=True)
    return hashlib.sha1(canonical.encode()).hexdigest()[:16]
