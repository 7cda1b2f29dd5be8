#!/usr/bin/env bash
# Build (idempotently) the qemu kernel matrix: sources, kernels, guest artifacts.
# Everything goes to ${THPCHECK_CACHE:-$HOME/.cache/thp-checker}; nothing into the repo.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
cd "$repo"
exec "$python" -m devtools.vm.build "$@"
