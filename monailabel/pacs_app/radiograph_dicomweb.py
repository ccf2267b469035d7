"""A MONAI Label datastore on a DICOMweb PACS for radiographs: the series it lists are CR/DX images, each handed to
the bundle as its DICOM file, and a final label is stored in the PACS as a DICOM SEG the bundle writes.

What MONAI Label 0.8.5's ``DICOMWebDatastore`` does and this one changes:

* it lists the series of one QIDO filter (``{"Modality": "CT"}``); this one lists every series of the radiograph
  modalities it is given (QIDO matches one modality per query);
* it converts each series to NIfTI (a 2D radiograph becomes a ``(columns, rows, 1)`` volume); this one keeps the
  single DICOM file, which the bundle reads as in its batch inference (display values, MONOCHROME1, spacing);
* it writes a label's SEG with dcmqi's ``itkimage2segimage``, downloaded from GitHub at start-up; this one with the
  bundle's own writer (``scripts.batch.writers.write_dicom_seg``, highdicom), the SEG OHIF displays; its segment is
  ``SEMIAUTOMATIC`` (a model's mask a person corrected) and its Series Description is :data:`LABEL_DESCRIPTION`;
* it takes every SEG in the PACS as a training label, the bundle's automatic SEGs from batch inference too; this one
  only the SEGs with :data:`LABEL_DESCRIPTION` (labels saved through MONAI Label), read back into PNG masks.

The local cache (``<cache>/<hash of the URL>/``) holds the radiographs as ``<Series Instance UID>.dcm`` and the final
labels as ``labels/final/<Series Instance UID>.png`` (0/1 at the image's rows x columns), which is what the bundle's
``train.json`` and MONAI Label's training task read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import sys
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from cachetools import TTLCache, cached
from dicomweb_client import DICOMwebClient
from monailabel.config import settings
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore
from monailabel.datastore.utils.dicom import dicom_web_download_series, dicom_web_upload_dcm
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.utils.others.generic import md5_digest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

# the Series Description of the SEGs this datastore stores and takes as labels
LABEL_DESCRIPTION = "Lung label (MONAI Label)"
LABEL_SERIES_NUMBER = 901


class RadiographDicomwebDatastore(DICOMWebDatastore):
    """MONAI Label's DICOMweb datastore for single-image radiograph series (see the module's docstring).

    Args:
        client: the PACS's DICOMweb client.
        bundle_dir: the bundle whose code writes and reads the SEGs (``scripts`` is imported from it).
        modalities: the modalities of the series listed as images.
        cache_path: the folder of the local cache (default: MONAI Label's, ``~/.cache/monailabel/dicom``).
        fetch_by_frame: retrieve instances frame by frame (MONAI Label's ``MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME``).
    """

    def __init__(
        self,
        client: DICOMwebClient,
        bundle_dir: str,
        modalities: Sequence[str] = ("CR", "DX"),
        cache_path: Optional[str] = None,
        fetch_by_frame: bool = False,
    ) -> None:
        # DICOMWebDatastore.__init__ would give the local cache NIfTI extensions only: set its fields here instead
        self._client = client
        self._modalities = tuple(modalities)
        self._search_filter = {"Modality": ",".join(self._modalities)}  # shown by MONAI Label, not used to search
        self._fetch_by_frame = fetch_by_frame
        self._convert_to_nifti = False
        self._bundle_dir = bundle_dir
        root = cache_path or os.path.join(pathlib.Path.home(), ".cache", "monailabel", "dicom")
        path = os.path.join(root, md5_digest(client.base_url))
        logger.info(f"Radiograph DICOMweb datastore (cache) path: {path}; modalities: {self._modalities}")
        LocalDatastore.__init__(self, datastore_path=path, extensions=("*.dcm", "*.png"), auto_reload=True)

    # ------------------------------------------------------------------------------------------------------------
    # listing

    @cached(cache=TTLCache(maxsize=16, ttl=settings.MONAI_LABEL_DICOMWEB_CACHE_EXPIRY))
    def list_images(self) -> List[str]:
        series = set()
        for modality in self._modalities:
            for found in self._client.search_for_series(search_filters={"Modality": modality}):
                series.add(str(Dataset.from_json(found)["SeriesInstanceUID"].value))
        logger.debug(f"Radiograph series: {len(series)}")
        return sorted(series)

    def _label_series(self) -> List[Tuple[str, str]]:
        """``(image series, SEG series)`` of the labels in the PACS: the SEGs with :data:`LABEL_DESCRIPTION` whose
        referenced series is a listed radiograph."""
        # selected here rather than in the query: Orthanc 1.10 matches no Series Description with parentheses
        found = [Dataset.from_json(item) for item in self._client.search_for_series(search_filters={"Modality": "SEG"})]
        images = set(self.list_images())
        pairs = []
        for seg in (seg for seg in found if str(seg.get("SeriesDescription", "")) == LABEL_DESCRIPTION):
            meta = Dataset.from_json(
                self._client.retrieve_series_metadata(str(seg.StudyInstanceUID), str(seg.SeriesInstanceUID))[0]
            )
            referenced = meta.get("ReferencedSeriesSequence")
            image = str(referenced[0].SeriesInstanceUID) if referenced else ""
            if image in images:
                pairs.append((image, str(seg.SeriesInstanceUID)))
            else:
                logger.warning(f"Label ignored: SEG series {seg.SeriesInstanceUID} references no listed radiograph")
        return pairs

    @cached(cache=TTLCache(maxsize=16, ttl=settings.MONAI_LABEL_DICOMWEB_CACHE_EXPIRY))
    def get_labeled_images(self, label_tag: Optional[str] = None, labels: Optional[List[str]] = None) -> List[str]:
        return sorted({image for image, _ in self._label_series()})

    def _download_labeled_data(self) -> None:
        for image, seg in self._label_series():
            self.get_image_uri(image)
            self.get_label_uri(seg, DefaultLabelTag.FINAL, image_id=image)

    # ------------------------------------------------------------------------------------------------------------
    # images and labels

    def get_image_uri(self, image_id: str) -> str:
        """The radiograph's DICOM file in the local cache, retrieved from the PACS the first time."""
        path = os.path.join(self._datastore.image_path(), f"{image_id}.dcm")
        if os.path.exists(path):
            return os.path.realpath(path)
        folder = os.path.join(self._datastore.image_path(), image_id)
        instances = _dicom_files(folder)
        if not instances:
            dicom_web_download_series(None, image_id, folder, self._client, self._fetch_by_frame)
            instances = _dicom_files(folder)
        if not instances:
            raise ValueError(f"series {image_id}: the PACS returned no instance")
        if len(instances) > 1:
            logger.warning(f"series {image_id} holds {len(instances)} images: the first by Instance Number is used")
        LocalDatastore.add_image(self, image_id, instances[0], self._dicom_info(image_id))
        return os.path.realpath(path)

    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        """A label's PNG mask in the local cache; a final label only in the PACS (``label_id`` a SEG series) is
        retrieved and read into one."""
        if label_tag != DefaultLabelTag.FINAL:
            return LocalDatastore.get_label_uri(self, label_id, label_tag)
        image_id = image_id or label_id
        local = LocalDatastore.get_label_uri(self, image_id, label_tag)
        if local and os.path.exists(local):
            return local
        if label_id == image_id:  # no SEG series named: nothing to retrieve
            return ""
        folder = os.path.join(self._datastore.label_path(label_tag), label_id)
        if not _dicom_files(folder):
            dicom_web_download_series(None, label_id, folder, self._client, self._fetch_by_frame)
        segs = _dicom_files(folder)
        if not segs:
            raise ValueError(f"SEG series {label_id}: the PACS returned no instance")
        image = dcmread(self.get_image_uri(image_id), stop_before_pixels=True)
        mask = _seg_mask(dcmread(segs[0]), (int(image.Rows), int(image.Columns)))
        with tempfile.TemporaryDirectory() as tmp:
            png = os.path.join(tmp, f"{image_id}.png")
            Image.fromarray(mask).save(png)
            LocalDatastore.save_label(self, image_id, png, label_tag, self._dicom_info(label_id))
        return LocalDatastore.get_label_uri(self, image_id, label_tag)

    def save_label(
        self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any], label_id: str = ""
    ) -> str:
        """Save a label; a final one is also stored in the PACS as a DICOM SEG of the radiograph (written by the
        bundle), and kept locally as a 0/1 PNG mask."""
        if label_tag != DefaultLabelTag.FINAL:
            return LocalDatastore.save_label(self, image_id, label_filename, label_tag, label_info)
        source = dcmread(self.get_image_uri(image_id), stop_before_pixels=True)
        mask = _label_mask(label_filename, (int(source.Rows), int(source.Columns)))
        writers, dicom, version = self._bundle_code()
        spacing, _ = dicom.pixel_spacing(source)
        with tempfile.TemporaryDirectory() as tmp:
            seg_file, _ = writers.write_dicom_seg(
                os.path.join(tmp, "label_seg.dcm"),
                source,
                mask,
                pixel_spacing=spacing,
                # the same mask gives the same SEG (a second save is a no-op), a corrected one a new SEG series
                uid_seed="monailabel " + hashlib.sha256(mask.tobytes()).hexdigest(),
                series_number=LABEL_SERIES_NUMBER,
                software_version=version,
                algorithm_type="SEMIAUTOMATIC",
                series_description=LABEL_DESCRIPTION,
            )
            series = dicom_web_upload_dcm(seg_file, self._client)
            if not series:
                raise RuntimeError(f"the PACS did not store the SEG of {image_id} (no series in its STOW-RS answer)")
            png = os.path.join(tmp, f"{image_id}.png")
            Image.fromarray(mask).save(png)
            info = dict(label_info or {})
            info.update(
                {
                    "SeriesInstanceUID": series,
                    "Modality": "SEG",
                    "PatientID": str(source.get("PatientID", "")),
                    "StudyInstanceUID": str(source.StudyInstanceUID),
                }
            )
            label = LocalDatastore.save_label(self, image_id, png, label_tag, info)
        logger.info(f"Label of {image_id} stored in the PACS as SEG series {series}")
        return label

    def _bundle_code(self):
        """The bundle's SEG writer and DICOM helpers, and its version (the bundle folder on ``sys.path``, as MONAI
        Label puts it there to run the bundle's configs)."""
        if self._bundle_dir not in sys.path:
            sys.path.insert(0, self._bundle_dir)
        from scripts.batch import writers
        from scripts.io import dicom

        metadata = pathlib.Path(self._bundle_dir, "configs", "metadata.json")
        version = json.loads(metadata.read_text()).get("version", "unknown") if metadata.is_file() else "unknown"
        return writers, dicom, version


def _dicom_files(folder: str) -> List[str]:
    """The DICOM files of a retrieved series folder, by Instance Number (then name); none when it does not exist."""
    if not os.path.isdir(folder):
        return []
    files = [os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".dcm")]

    def order(path: str) -> Tuple[int, str]:
        number = dcmread(path, stop_before_pixels=True, specific_tags=["InstanceNumber"]).get("InstanceNumber")
        return int(number) if number not in (None, "") else 0, path

    return sorted(files, key=order)


def _label_mask(path: str, shape: Tuple[int, int]) -> np.ndarray:
    """A label file as a ``(rows, columns)`` 0/1 mask: PNG/JPEG (any non-zero value is lung) or NIfTI (MONAI's
    ``(x, y)`` or ``(x, y, 1)`` layout, as MONAI Label writes 2D results)."""
    if path.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        array = np.asarray(nib.load(path).dataobj)
        array = array.reshape(array.shape[:2]).T if array.ndim == 3 and array.shape[2] == 1 else array.T
    else:
        with Image.open(path) as image:
            array = np.asarray(image.convert("L"))
    if array.shape != shape:
        raise ValueError(
            f"label {os.path.basename(path)}: {array.shape[0]}x{array.shape[1]} pixels, the image has "
            f"{shape[0]}x{shape[1]} (rows x columns)"
        )
    return (array > 0).astype(np.uint8)


def _seg_mask(seg: Dataset, shape: Tuple[int, int]) -> np.ndarray:
    """The 0/1 mask of a binary SEG of one image: every segment's frames together."""
    frames = np.asarray(seg.pixel_array)
    frames = frames.reshape((-1,) + frames.shape[-2:])
    if frames.shape[1:] != shape:
        raise ValueError(
            f"SEG {seg.SOPInstanceUID}: {frames.shape[1]}x{frames.shape[2]} pixels, the image has "
            f"{shape[0]}x{shape[1]}"
        )
    return frames.any(axis=0).astype(np.uint8)
