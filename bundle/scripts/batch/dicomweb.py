"""A DICOMweb server (a PACS such as Orthanc) as the source and destination of batch inference, with
``dicomweb-client``.

:class:`DicomwebSource` finds the instances to segment (QIDO-RS: given studies, or a query such as a modality and a
study-date range), leaves out those that already have this model's SEG with the same settings (its UID is known in
advance, see :func:`scripts.batch.writers.seg_sop_uid`), retrieves the others (WADO-RS) into a folder of the run, and
stores each SEG the run writes back (STOW-RS). Batch inference then goes through the same pipeline as for a folder:
:func:`scripts.batch.run_start.open_run` takes the entries :meth:`DicomwebSource.discover` returns in place of a folder
walk, so every instance found has its report row (``<study>/<series>/<instance>.dcm``, with its UIDs), including
those that could not be retrieved.

Credentials never come from configs or logs: ``DICOMWEB_TOKEN`` (a bearer token) or ``DICOMWEB_USERNAME`` and
``DICOMWEB_PASSWORD`` (HTTP basic) from the environment, else the machine's ``~/.netrc`` entry for the server's host
(``requests`` reads it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import pydicom

from ..io.discovery import classify_file, entry_for
from ..io.errors import RunFault

__all__ = ["DicomwebSource", "dicomweb_source", "PACS_FOLDER"]

logger = logging.getLogger(__name__)

PACS_FOLDER = "pacs_inputs"  # in the output folder: the retrieved instances, as <study>/<series>/<instance>.dcm
_NOT_IMAGES = {"SEG", "SR", "KO", "PR", "RTSTRUCT", "DOC", "RWV"}  # series types that are never radiographs


class DicomwebSource:
    """Instances of a DICOMweb server to segment, and the place their SEGs go back to.

    Args:
        url: the server's DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web``.
        study_uids: Study Instance UIDs to segment (a list, or one string of UIDs separated by commas or spaces);
            empty: the instances ``query`` finds.
        query: QIDO-RS attribute filters for instances, e.g. ``{"Modality": "DX", "StudyDate": "20240101-20241231"}``
            (with ``study_uids`` they narrow each study's instances).
        modalities: modalities to segment (others are listed as skipped); empty or ``None``: any but SEG, SR and
            other non-image series.
        store: store each SEG written back to the server.
        timeout: seconds to wait for one request.
        workers: instances retrieved at once.
    """

    def __init__(
        self,
        url: str,
        study_uids: str | Iterable[str] = (),
        query: dict | None = None,
        modalities: Iterable[str] | None = None,
        store: bool = True,
        timeout: float = 60.0,
        workers: int = 4,
    ) -> None:
        if not str(url).startswith(("http://", "https://")):
            raise ValueError(f"--dicomweb#url must be an http(s) URL of a DICOMweb root, got {url!r}")
        self.url = str(url).rstrip("/")
        if isinstance(study_uids, str):
            study_uids = study_uids.replace(",", " ").split()
        self.study_uids = [str(u) for u in study_uids or ()]
        self.query = {str(k): str(v) for k, v in (query or {}).items()}
        self.modalities = {str(m).upper() for m in modalities or () if str(m)}
        self.store = bool(store)
        self.timeout = float(timeout)
        self.workers = max(1, int(workers))
        self._client = None
        self._client_pid = None

    @property
    def client(self):
        """The ``DICOMwebClient`` of this process (a forked writer process makes its own connection)."""
        if self._client is None or self._client_pid != os.getpid():
            import requests
            from dicomweb_client.api import DICOMwebClient

            session = requests.Session()  # reads ~/.netrc for the host when no credentials are set below
            token, user = os.environ.get("DICOMWEB_TOKEN"), os.environ.get("DICOMWEB_USERNAME")
            if token:
                session.headers["Authorization"] = f"Bearer {token}"
            elif user:
                session.auth = (user, os.environ.get("DICOMWEB_PASSWORD", ""))
            self._client = DICOMwebClient(self.url, session=session, timeout=self.timeout)
            self._client_pid = os.getpid()
        return self._client

    def __getstate__(self) -> dict:  # a copy for another process connects anew
        return {**self.__dict__, "_client": None, "_client_pid": None}

    def find_instances(self) -> list[dict]:
        """Every instance the studies or the query select: ``study``, ``series``, ``sop``, ``modality`` (QIDO-RS).

        Raises:
            RunFault: the server cannot be reached or refuses the search.
        """
        try:
            if self.study_uids:
                found = []
                for study in self.study_uids:
                    found += self.client.search_for_instances(
                        study_instance_uid=study, search_filters=self.query, get_remaining=True
                    )
            else:
                found = self.client.search_for_instances(search_filters=self.query, get_remaining=True)
        except Exception as exc:  # requests' and dicomweb-client's errors: the run cannot start without the list
            raise RunFault(f"the DICOMweb server {self.url} cannot be searched ({_describe(exc)})") from exc
        instances = []
        for item in found:
            attributes = pydicom.Dataset.from_json(item)
            instances.append(
                {
                    "study": str(attributes.get("StudyInstanceUID", "")),
                    "series": str(attributes.get("SeriesInstanceUID", "")),
                    "sop": str(attributes.get("SOPInstanceUID", "")),
                    "modality": str(attributes.get("Modality", "")).upper(),
                }
            )
        return sorted(instances, key=lambda i: (i["study"], i["series"], i["sop"]))

    def stored_segs(self, study_uids: Iterable[str]) -> set[str]:
        """The SOP Instance UIDs of the SEG instances already in these studies."""
        uids = set()
        for study in sorted(set(study_uids)):
            try:
                found = self.client.search_for_instances(
                    study_instance_uid=study, search_filters={"Modality": "SEG"}, get_remaining=True
                )
            except Exception as exc:
                raise RunFault(f"the DICOMweb server {self.url} cannot be searched ({_describe(exc)})") from exc
            uids |= {str(pydicom.Dataset.from_json(item).get("SOPInstanceUID", "")) for item in found}
        return uids

    def discover(self, folder: str, seg_uid: Callable[[str], str] | None = None) -> list[dict]:
        """Retrieve the instances to segment into ``folder`` and return one discovery entry per instance found (see
        :func:`scripts.io.discovery.classify_file`): pending when retrieved, skipped when its modality is not
        segmented or its SEG is in the server already (``seg_uid(sop_instance_uid)`` is the SEG this run would
        write), failed when it cannot be retrieved.
        """
        instances = self.find_instances()
        if not instances:
            wanted = f"studies {', '.join(self.study_uids)}" if self.study_uids else "the whole server"
            raise FileNotFoundError(
                f"{self.url}: no instances found in {wanted} with the query {self.query or '{}'} "
                "(check --dicomweb#studies and --dicomweb#query)"
            )
        logger.info("%s: %d instances found", self.url, len(instances))
        stored = self.stored_segs(i["study"] for i in instances) if seg_uid else set()
        entries: dict[str, dict] = {}
        to_retrieve = []
        for instance in instances:
            display = f"{instance['study']}/{instance['series']}/{instance['sop']}.dcm"
            path = os.path.join(folder, display)
            modality = instance["modality"]
            if modality in _NOT_IMAGES or (self.modalities and modality not in self.modalities):
                entries[display] = entry_for(path, display, "dicom", "skipped", f"modality {modality or 'none'}")
            elif seg_uid and seg_uid(instance["sop"]) in stored:
                entries[display] = entry_for(
                    path, display, "dicom", "skipped", "its SEG with these settings is in the PACS already"
                )
            else:
                to_retrieve.append((instance, path, display))

        def retrieve(job: tuple[dict, str, str]) -> tuple[str, dict]:
            instance, path, display = job
            try:
                dataset = self.client.retrieve_instance(instance["study"], instance["series"], instance["sop"])
                os.makedirs(os.path.dirname(path), exist_ok=True)
                dataset.save_as(path, enforce_file_format=True)
            except Exception as exc:  # this instance only: the others go on
                return display, entry_for(path, display, "dicom", "failed", f"retrieving it: {_describe(exc)}")
            return display, classify_file(path, display)

        with ThreadPoolExecutor(self.workers) as pool:
            entries.update(pool.map(retrieve, to_retrieve))
        return [entries[key] for key in sorted(entries)]

    def store_seg(self, path: str) -> None:
        """Store one SEG file (STOW-RS); raise ``RuntimeError`` saying why the server refused it."""
        dataset = pydicom.dcmread(path)
        try:
            answer = self.client.store_instances([dataset])
        except Exception as exc:
            raise RuntimeError(f"the PACS did not store it ({_describe(exc)})") from exc
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            reason = failed[0].get("FailureReason", "")
            raise RuntimeError(f"the PACS refused it (failure reason {reason})")


def dicomweb_source(url: str = "", **options) -> DicomwebSource | None:
    """A :class:`DicomwebSource` for ``url`` with ``options``, or ``None`` when ``url`` is empty (the run reads a
    folder)."""
    return DicomwebSource(url, **options) if url else None


def _describe(exc: BaseException) -> str:
    """An HTTP or connection error in a line, without any credential (URLs are the server's, never with a password)."""
    response = getattr(exc, "response", None)
    if response is not None and getattr(response, "status_code", None):
        return f"HTTP {response.status_code} {response.reason or ''} from {response.url}".strip()
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300]
