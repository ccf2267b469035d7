#!/usr/bin/env bash
# Install what the PACS tests and the local demo stack need (safe to re-run):
#   Debian: orthanc + orthanc-dicomweb (the PACS), chromium (the browser the tests drive), dicom3tools (dciodvfy);
#   npm: the OHIF viewer, @ohif/app, whose prebuilt dist/ is unpacked into .pacs/ohif/package/dist (no node_modules);
#   Python (.venv): Playwright and dicomweb-client come with `pip install -e ".[test]"` (tools/setup_env.sh).
# Orthanc's Debian package may start a system service where systemd runs; the tests and pacs/stack.py start servers
# of their own on free loopback ports and leave any other Orthanc alone.
set -euo pipefail
cd "$(dirname "$0")/.."
OHIF_VERSION=${OHIF_VERSION:-3.13.2}

if command -v apt-get >/dev/null 2>&1; then
    need=()
    for package in orthanc orthanc-dicomweb chromium dicom3tools; do
        dpkg -s "$package" >/dev/null 2>&1 || need+=("$package")
    done
    if [ ${#need[@]} -gt 0 ]; then
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo=sudo
        $sudo apt-get update -q
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${need[@]}"
    fi
else
    echo "no apt-get: install Orthanc with its DICOMweb plugin, Chromium and dicom3tools yourself" >&2
fi

if [ "$(cat .pacs/ohif/VERSION 2>/dev/null)" != "$OHIF_VERSION" ] || [ ! -f .pacs/ohif/package/dist/index.html ]; then
    rm -rf .pacs/ohif
    mkdir -p .pacs/ohif
    (cd .pacs/ohif && npm pack "@ohif/app@$OHIF_VERSION" --silent >/dev/null && tar xzf ohif-app-*.tgz && rm ohif-app-*.tgz)
    echo "$OHIF_VERSION" > .pacs/ohif/VERSION
fi
echo "PACS stack ready: $(Orthanc --version 2>/dev/null | head -1), OHIF $(cat .pacs/ohif/VERSION), $(chromium --version 2>/dev/null)"
