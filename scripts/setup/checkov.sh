#!/usr/bin/env bash
# checkov (the Kubernetes manifest scanner tests/chart/test_checkov.py runs) in a virtualenv of
# its own under the cache: its many pinned dependencies stay out of .venv. Idempotent: does
# nothing when the pinned version is installed. Prints the checkov executable's path.
set -euo pipefail
version="3.3.30"
cache="${THPCHECK_CACHE:-$HOME/.cache/thp-checker}"
venv="$cache/checkov-$version"
python="${PYTHON:-python3}"
if ! "$venv/bin/checkov" --version 2>/dev/null | grep -qx "$version"; then
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "checkov==$version" >&2
fi
echo "$venv/bin/checkov"
