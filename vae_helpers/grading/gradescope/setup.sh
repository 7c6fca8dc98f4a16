#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder's image; the zip's
# files are then in /autograder/source. It installs bubblewrap (the sandbox), a Python of
# 3.11 or later, and into the virtual environment /autograder/venv the pinned
# requirements and the vae_helpers package shipped in package/.
set -euo pipefail
SOURCE="$(cd "$(dirname "$0")" && pwd)"
VENV="${AUTOGRADER_VENV:-/autograder/venv}"
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends bubblewrap python3 python3-venv
PYTHON=python3
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    apt-get install -y --no-install-recommends python3.11 python3.11-venv
    PYTHON=python3.11
fi
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --upgrade pip
"$VENV/bin/python" -m pip install -r "$SOURCE/package/requirements.txt"
"$VENV/bin/python" -m pip install --no-deps "$SOURCE/package"
