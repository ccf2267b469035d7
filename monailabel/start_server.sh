#!/usr/bin/env bash
# Start a MONAI Label 0.8.5 server with this bundle in its `monaibundle` app, offline, on 127.0.0.1.
#
# Usage: monailabel/start_server.sh --studies DIR [--name NAME] [--port PORT] [--host HOST] [--workspace DIR]
#                                   [--copy] [-- more `monailabel start_server` arguments]
#   --studies DIR    folder of images to label: PNG, JPEG and DICOM (.dcm) files; labels go to DIR/labels/
#   --studies URL    or a DICOMweb PACS (http://host:port/dicom-web): its CR and DX series are the images, final
#                    labels are stored in it as DICOM SEG (the app in monailabel/pacs_app, see monailabel/README.md)
#   --name NAME      model name clients see (default cxr_lung_segmentation)
#   --port PORT      default 8000;  --host HOST: default 127.0.0.1 (this machine only)
#   --workspace DIR  where the app is set up (default <repo>/.monailabel-workspace)
#   --copy           copy bundle/ into the app instead of linking it (training then writes into the copy, not into
#                    the repository's bundle/models)
# Set up the environment first: monailabel/setup_monailabel.sh (MONAILABEL_VENV chooses another environment).
#
# Settings used (see the bundle card, "MONAI Label"):
#   --conf models NAME          the bundle, found in the app's model/NAME folder
#   --conf zoo_source github    any source but "monaihosting": MONAI Label then lists no model zoo and downloads
#                               nothing when model/NAME exists
#   --conf sam2 false           no SAM2 models, so no SAM2 weights are downloaded
#   MONAI_LABEL_DATASTORE_FILE_EXT  the datastore lists .dcm (and .jpeg) files as well as MONAI Label's defaults
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MONAILABEL_VENV:-$REPO/.venv-monailabel}"
WORKSPACE="${MONAILABEL_WORKSPACE:-$REPO/.monailabel-workspace}"
NAME=cxr_lung_segmentation
HOST=127.0.0.1
PORT=8000
STUDIES=""
COPY=false

while [ $# -gt 0 ]; do
    case "$1" in
        --studies) STUDIES="$2"; shift 2 ;;
        --name) NAME="$2"; shift 2 ;;
        --port) PORT="$2"; shift 2 ;;
        --host) HOST="$2"; shift 2 ;;
        --workspace) WORKSPACE="$2"; shift 2 ;;
        --copy) COPY=true; shift ;;
        --) shift; break ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [ -z "$STUDIES" ]; then
    echo "--studies DIR is required: a folder of PNG, JPEG or DICOM images (see --help)" >&2
    exit 2
fi
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import monailabel" 2>/dev/null; then
    echo "MONAI Label is not installed in $VENV: run monailabel/setup_monailabel.sh first" >&2
    exit 1
fi
case "$NAME" in
    *deepedit*|*deepgrow*|*detection*|*classification*)
        # MONAI Label picks the task type from these words in the model name
        echo "--name must not contain deepedit, deepgrow, detection or classification: $NAME" >&2; exit 2 ;;
esac

PACS=false
case "$STUDIES" in http://*|https://*) PACS=true ;; esac
mkdir -p "$WORKSPACE"
$PACS || mkdir -p "$STUDIES"
WORKSPACE="$(cd "$WORKSPACE" && pwd)"
# the app is monaibundle with this bundle's trainer (monailabel/folder_app), on a PACS with the radiograph DICOMweb
# datastore too (monailabel/pacs_app)
APP="$WORKSPACE/monaibundle"
APP_SOURCE="$REPO/monailabel/folder_app"
$PACS && APP="$WORKSPACE/monaibundle-pacs" && APP_SOURCE="$REPO/monailabel/pacs_app"
if [ ! -f "$APP/bundle_app.py" ]; then
    # the app ships inside the monailabel package: this copies it, nothing is downloaded. Copied through a temporary
    # folder because MONAI Label refuses to copy into an existing one, and model/ may already hold bundles.
    download="$(mktemp -d "$WORKSPACE/.monaibundle-XXXXXX")"
    "$VENV/bin/python" -m monailabel.main apps --download --name monaibundle --output "$download" >/dev/null
    mkdir -p "$APP"
    rm -rf "$APP/lib" "$APP/main.py"  # an app set up before the bundle had its own trainer: the sample's files anew
    cp -a -n "$download/monaibundle/." "$APP/"
    rm -rf "$download"
    mv "$APP/main.py" "$APP/bundle_app.py"
fi
# refreshed at every start, so the app runs the repository's current version
cp "$APP_SOURCE"/*.py "$REPO/monailabel/served_model_training.py" "$APP/"
if $PACS; then
    export MONAI_LABEL_DICOMWEB_CACHE_PATH="${MONAI_LABEL_DICOMWEB_CACHE_PATH:-$WORKSPACE/dicomweb-cache}"
fi
mkdir -p "$APP/model"
MODEL="$APP/model/$NAME"
if $COPY; then
    if [ -L "$MODEL" ]; then rm "$MODEL"; fi
    if [ ! -d "$MODEL" ]; then
        mkdir -p "$MODEL"
        (cd "$REPO/bundle" && tar --exclude=./eval --exclude=./data --exclude=./cache --exclude=./outputs \
            --exclude=__pycache__ -cf - .) | (cd "$MODEL" && tar -xf -)
        echo "copied $REPO/bundle to $MODEL"
    else
        echo "using the existing copy $MODEL (delete it to copy the bundle again)"
    fi
else
    if [ -e "$MODEL" ] && [ ! -L "$MODEL" ]; then
        echo "$MODEL is a copy, not a link: start with --copy, or delete it to link bundle/" >&2
        exit 1
    fi
    ln -sfn "$REPO/bundle" "$MODEL"
    if git -C "$REPO" ls-files --error-unmatch bundle/models/model.pt >/dev/null 2>&1; then
        echo "note: $MODEL links bundle/: a /train replaces bundle/models/model.pt, the shipped weights (kept as" \
            "model_release.pt); start with --copy to leave bundle/ as it is" >&2
    fi
fi
if ! ls "$MODEL"/models/model.pt >/dev/null 2>&1; then
    echo "note: $MODEL/models/model.pt does not exist yet: /info lists no model until one is trained" \
        "(POST /train/$NAME) and the server restarted" >&2
fi

export MONAI_LABEL_DATASTORE_FILE_EXT="${MONAI_LABEL_DATASTORE_FILE_EXT:-[\"*.png\", \"*.jpg\", \"*.jpeg\", \"*.dcm\", \"*.nii.gz\", \"*.nii\"]}"
# MONAI Label runs multi-GPU training with `torchrun` found on PATH: use the environment's
export PATH="$VENV/bin:$PATH"
cd "$WORKSPACE"
exec "$VENV/bin/python" -m monailabel.main start_server \
    --app "$APP" --studies "$STUDIES" --host "$HOST" --port "$PORT" \
    --conf models "$NAME" --conf zoo_source github --conf sam2 false "$@"
