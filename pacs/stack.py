"""A local PACS on loopback, for tests and demos: Orthanc with its DICOMweb plugin, and the OHIF viewer served with a
same-origin proxy to it.

* :class:`Orthanc` runs the Debian ``orthanc`` server (``orthanc-dicomweb`` for DICOMweb) on a free port of
  127.0.0.1 with its own storage folder, no DICOM port and no remote access, and stops it (only it) on exit.
* :class:`OhifViewer` serves the prebuilt OHIF viewer (the ``dist/`` folder of the npm package ``@ohif/app``) at
  ``/`` with a configuration that reads ``/dicom-web`` of the same origin, and forwards ``/dicom-web`` to Orthanc: the
  browser sees one server, so no CORS setting is needed anywhere.

``pacs/setup_pacs.sh`` installs what these need; :func:`missing` says what is absent and how to get it.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["Orthanc", "OhifViewer", "free_port", "ohif_dist", "missing", "CHROMIUM", "CHROMIUM_ARGS"]

REPOSITORY = Path(__file__).resolve().parents[1]
ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# headless Chromium on a machine with no outside network: no background connections, no GPU, no sandbox as root
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SETUP = "bash pacs/setup_pacs.sh"


def ohif_dist() -> Path:
    """The OHIF viewer's ``dist/`` folder: ``$OHIF_DIST``, else where ``pacs/setup_pacs.sh`` unpacks ``@ohif/app``."""
    return Path(os.environ.get("OHIF_DIST") or REPOSITORY / ".pacs" / "ohif" / "package" / "dist")


def missing(viewer: bool = True, browser: bool = True) -> list[str]:
    """What the stack lacks on this machine, each with how to get it (empty when all is there)."""
    absent = []
    if not Path(ORTHANC).exists() or not DICOMWEB_PLUGIN.exists():
        absent.append(f"Orthanc with DICOMweb (Debian packages orthanc, orthanc-dicomweb; {SETUP})")
    if viewer and not (ohif_dist() / "index.html").exists():
        absent.append(f"the OHIF viewer (npm package @ohif/app in {ohif_dist()}, or set OHIF_DIST; {SETUP})")
    if browser:
        if not Path(CHROMIUM).exists():
            absent.append(f"Chromium (Debian package chromium; {SETUP})")
        try:
            import playwright  # noqa: F401
        except ImportError:
            absent.append(f"Playwright (pip install playwright; {SETUP})")
    return absent


def free_port() -> int:
    """A TCP port of 127.0.0.1 free now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """An Orthanc server of our own on ``127.0.0.1:<port>``, its database in ``folder``.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. HTTP only (REST at :attr:`url`, DICOMweb at
    :attr:`dicomweb_url`); the DICOM protocol port is off and only loopback clients are accepted.

    Args:
        folder: where the configuration, the database and the log go (created).
        port: the HTTP port (default: a free one).
        name: the server's AE title and name.
    """

    def __init__(self, folder: str | Path, port: int | None = None, name: str = "CXRPACS") -> None:
        self.folder = Path(folder)
        self.port = port or free_port()
        self.name = name
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def configuration(self) -> dict:
        """Orthanc's configuration: loopback HTTP, no DICOM port, DICOMweb with full metadata (OHIF reads it)."""
        storage = str(self.folder / "db")
        return {
            "Name": self.name,
            "DicomAet": self.name,
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "HttpPort": self.port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": False,
            "HttpCompressionEnabled": False,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "StudiesMetadata": "Full"},
        }

    def start(self, timeout: float = 30.0) -> "Orthanc":
        """Start the server and wait until it answers; raise ``RuntimeError`` with its log when it does not."""
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "orthanc.json"
        config.write_text(json.dumps(self.configuration(), indent=4))
        log = open(self.folder / "orthanc.log", "wb")
        self.process = subprocess.Popen([ORTHANC, str(config)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.url}/system", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not start on {self.url}:\n{self.log()[-3000:]}")

    def log(self) -> str:
        path = self.folder / "orthanc.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop the server this object started (nothing else)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def upload(self, path: str | Path) -> dict:
        """Store one DICOM file through Orthanc's REST API; its answer (``ID``, ``ParentStudy``, ...)."""
        request = urllib.request.Request(f"{self.url}/instances", data=Path(path).read_bytes(), method="POST")
        with urllib.request.urlopen(request, timeout=60) as answer:
            return json.loads(answer.read())

    def __enter__(self) -> "Orthanc":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def viewer_configuration(dicomweb_root: str = "/dicom-web") -> str:
    """OHIF's ``app-config.js``: one DICOMweb data source at ``dicomweb_root`` of the page's own origin."""
    origin_root = f"window.location.origin + {json.dumps(dicomweb_root)}"
    return f"""window.config = {{
  routerBasename: '/',
  extensions: [],
  modes: [],
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  defaultDataSourceName: 'pacs',
  dataSources: [
    {{
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'pacs',
      configuration: {{
        friendlyName: 'Orthanc (local)',
        name: 'orthanc',
        wadoUriRoot: {origin_root},
        qidoRoot: {origin_root},
        wadoRoot: {origin_root},
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        singlepart: 'bulkdata,video',
        bulkDataURI: {{ enabled: true, relativeResolution: 'studies' }},
        omitQuotationForMultipartRequest: true,
      }},
    }},
  ],
}};
"""


_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
               "transfer-encoding", "upgrade", "host", "content-length"}  # fmt: skip


class _ViewerHandler(http.server.SimpleHTTPRequestHandler):
    """Static files of the viewer (any unknown path is the single-page app's ``index.html``), its configuration, and
    ``/dicom-web`` forwarded to the PACS."""

    server: "_ViewerServer"
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm",
                      ".js": "text/javascript", ".mjs": "text/javascript"}  # fmt: skip

    def log_message(self, format: str, *args) -> None:  # quiet: the tests read the browser, not the access log
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self._forwarded():
            return
        path = urlsplit(self.path).path
        if path == "/app-config.js":
            body = self.server.config_js.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/javascript")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if not (Path(self.directory) / path.lstrip("/")).is_file():
            self.path = "/index.html"  # a route of the single-page app (``/viewer?StudyInstanceUIDs=...``)
        super().do_GET()

    def do_POST(self) -> None:  # noqa: N802
        if not self._forwarded():
            self.send_error(405)

    do_PUT = do_DELETE = do_POST  # noqa: N815 (http.server's naming)

    def _forwarded(self) -> bool:
        if not urlsplit(self.path).path.startswith(self.server.forward_prefix):
            return False
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        target = urlsplit(self.server.backend)
        connection = http.client.HTTPConnection(target.hostname, target.port, timeout=300)
        try:
            connection.request(self.command, self.path, body=body, headers=headers)
            answer = connection.getresponse()
            data = answer.read()
        except OSError as exc:
            self.send_error(502, f"PACS unreachable: {exc}")
            return True
        finally:
            connection.close()
        self.send_response(answer.status, answer.reason)
        for key, value in answer.getheaders():
            if key.lower() not in _HOP_BY_HOP:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        return True


class _ViewerServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler, backend: str, config_js: str, forward_prefix: str) -> None:
        super().__init__(address, handler)
        self.backend, self.config_js, self.forward_prefix = backend, config_js, forward_prefix


class OhifViewer:
    """The OHIF viewer on ``127.0.0.1:<port>``, reading the DICOMweb server at ``backend`` through this origin.

    Args:
        backend: the PACS's base URL (``http://127.0.0.1:8042``); ``/dicom-web/...`` is forwarded there.
        dist: the viewer's ``dist/`` folder (default :func:`ohif_dist`).
        port: the port (default: a free one).
    """

    def __init__(self, backend: str, dist: str | Path | None = None, port: int | None = None) -> None:
        self.backend = backend.rstrip("/")
        self.dist = Path(dist or ohif_dist())
        self.port = port or free_port()
        self._server: _ViewerServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def study_url(self, study_uid: str, series_uid: str | None = None) -> str:
        """The viewer page of one study (``series_uid``: the series shown first, e.g. a SEG)."""
        url = f"{self.url}/viewer?StudyInstanceUIDs={study_uid}"
        return url + (f"&initialSeriesInstanceUID={series_uid}" if series_uid else "")

    def start(self) -> "OhifViewer":
        if not (self.dist / "index.html").exists():
            raise FileNotFoundError(f"no OHIF viewer in {self.dist}: run {SETUP}, or set OHIF_DIST")

        def handler(*args, **kwargs):
            return _ViewerHandler(*args, directory=str(self.dist), **kwargs)

        self._server = _ViewerServer(
            ("127.0.0.1", self.port), handler, self.backend, viewer_configuration(), forward_prefix="/dicom-web"
        )
        self._thread = threading.Thread(target=self._server.serve_forever, name="ohif-viewer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "OhifViewer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
