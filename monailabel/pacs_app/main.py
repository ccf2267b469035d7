"""MONAI Label 0.8.5's ``monaibundle`` app on a DICOMweb PACS of radiographs.

``monailabel/start_server.sh --studies http://host:port/dicom-web`` starts this app: the ``monaibundle`` sample app
(its ``main.py`` copied beside this file as ``bundle_app.py``) with two changes, because MONAI Label's own DICOMweb
datastore is made for CT series (see ``monailabel/README.md``, "MONAI Label on a PACS"):

* the datastore is :class:`radiograph_dicomweb.RadiographDicomwebDatastore`: it lists the radiograph series (CR and
  DX by default), hands the bundle each radiograph as the DICOM file it is, and stores a final label as a DICOM SEG
  written by the bundle's own writer;
* nothing is downloaded at start-up: MONAI Label's app fetches dcmqi from GitHub to write SEGs, which this app does
  not use;
* ``/train`` writes the served ``models/model.pt`` and keeps the shipped weights (:mod:`served_model_training`), as
  on a folder.

Settings (``--conf NAME VALUE``): ``modalities`` (comma-separated, default ``CR,DX``), the radiograph modalities the
PACS is searched for. The DICOMweb client is made from MONAI Label's own settings (``MONAI_LABEL_DICOMWEB_USERNAME``
and ``..._PASSWORD``, ``MONAI_LABEL_QIDO_PREFIX`` ..., ``MONAI_LABEL_DICOMWEB_CACHE_PATH``).
"""

from __future__ import annotations

import logging
import os

import bundle_app  # the monaibundle sample app's main.py, copied here by start_server.sh
from dicomweb_client.session_utils import create_session_from_user_pass
from monailabel.config import settings
from monailabel.datastore.dicom import DICOMwebClientX
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from radiograph_dicomweb import RadiographDicomwebDatastore
from served_model_training import served_model_trainers

logger = logging.getLogger(__name__)


# MONAI Label takes the first class of main.py (by name) with a base named MONAILabelApp: the sample app's class is
# reached through its module, not imported by name, and MONAILabelApp is named among this class's bases
class RadiographPacsApp(bundle_app.MyApp, MONAILabelApp):
    """The ``monaibundle`` app with a DICOMweb datastore for radiographs (see the module's docstring)."""

    def init_trainers(self) -> dict:
        return served_model_trainers(self)

    def _download_dcmqi_tools(self) -> None:
        """Nothing to download: SEGs are written by the bundle (highdicom), not by dcmqi's ``itkimage2segimage``."""

    def _init_dicomweb_datastore(self) -> Datastore:
        session = None
        if settings.MONAI_LABEL_DICOMWEB_USERNAME and settings.MONAI_LABEL_DICOMWEB_PASSWORD:
            session = create_session_from_user_pass(
                settings.MONAI_LABEL_DICOMWEB_USERNAME, settings.MONAI_LABEL_DICOMWEB_PASSWORD
            )
        client = DICOMwebClientX(
            url=self.studies,
            session=session,
            qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
            wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
            stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX,
        )
        if not self.models:
            raise RuntimeError(f"no bundle in {self.model_dir}: the datastore writes SEGs with the bundle's code")
        bundle_dir = next(iter(self.models.values()))
        modalities = [m.strip().upper() for m in self.conf.get("modalities", "CR,DX").split(",") if m.strip()]
        cache_path = (settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip() or None
        logger.info(f"Radiograph DICOMweb datastore: {self.studies}; modalities {modalities}; bundle {bundle_dir}")
        return RadiographDicomwebDatastore(
            client,
            bundle_dir=os.fspath(bundle_dir),
            modalities=modalities,
            cache_path=cache_path,
            fetch_by_frame=settings.MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME,
        )
