"""The fingerprint of a batch run's settings: a later run into the same output folder reuses a finished input's row
and outputs only when its fingerprint is the same (:class:`scripts.batch.report.RunReport`).

The fingerprint is :attr:`scripts.batch.batch_run.BatchRun.settings`: every argument of the run that changes what is
written for an input (the weights, the model's input settings, the precision, the post-processing, which outputs and
how); its other arguments are declared neutral there, each with its reason. Every option of the batch configs that
reaches no argument of the run is declared here, in :data:`OUTPUT_NEUTRAL`, with the reason it changes no output;
``tests/test_fingerprint.py`` fails for an option that is in neither, so a new option cannot be forgotten.
"""

from __future__ import annotations

import hashlib
import json
import os

__all__ = ["OUTPUT_NEUTRAL", "file_signature", "settings_id"]

# options of inference.json, evaluate.json and multi_gpu_inference.json that reach no argument of
# scripts.batch.batch_run.BatchRun (whose neutral arguments say their own reasons), and why (tests/test_fingerprint.py)
OUTPUT_NEUTRAL = {
    "bundle_root": "where the bundle is",
    "inputs#max_image_pixels": "refuses a file before decoding; the masks of a file it admits do not depend on it",
    "channels_last": "memory layout: the same arithmetic",
    "batch_size": "how many inputs the network sees at once: each is segmented alone",
    "num_workers": "parallelism",
    "split#part": "which inputs (evaluation)",
    "split#file": "which inputs (evaluation)",
    "displayable_configs#result_extension": "MONAI Label's result file type; batch runs do not read it",
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
