#!/usr/bin/env bash
# Create .venv with the project (editable) and, with --dev, the test tools. Reinstalls only
# when pyproject.toml changed since the last install.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
extra=""
[[ "${1:-}" == "--dev" ]] && extra="[dev]"
python="${PYTHON:-python3}"
venv="$repo/.venv"
stamp="$venv/.installed$extra"
want="$(sha256sum "$repo/pyproject.toml" | cut -c1-16)"
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -e "$repo$extra" >&2
echo "$want" > "$stamp"
