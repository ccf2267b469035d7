"""MONAI Label 0.8.5's ``monaibundle`` app on a folder of studies, with this bundle's trainer.

``monailabel/start_server.sh --studies FOLDER`` starts this app: the ``monaibundle`` sample app (its ``main.py`` copied
beside this file as ``bundle_app.py``) whose ``/train`` writes the served ``models/model.pt`` and keeps the shipped
weights as ``models/model_release.pt`` (:mod:`served_model_training`).
"""

from __future__ import annotations

import bundle_app  # the monaibundle sample app's main.py, copied here by start_server.sh
from monailabel.interfaces.app import MONAILabelApp
from served_model_training import served_model_trainers


# MONAI Label takes the first class of main.py (by name) with a base named MONAILabelApp: the sample app's class is
# reached through its module, not imported by name, and MONAILabelApp is named among this class's bases
class RadiographFolderApp(bundle_app.MyApp, MONAILabelApp):
    """The ``monaibundle`` app whose training updates the served model (see the module's docstring)."""

    def init_trainers(self) -> dict:
        return served_model_trainers(self)
