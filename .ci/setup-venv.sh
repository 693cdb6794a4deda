#!/usr/bin/env bash
# Creates .venv with the package (editable) and its test tools; a no-op when nothing changed.
# TORCH_SPEC picks the torch build (default torch==2.13.0: on our machines a CPU wheel on local
# disk; elsewhere set e.g. TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu").
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${FEWSHOT_METAOPT_VENV:-$repo/.venv}"
torch_spec="${TORCH_SPEC:-torch==2.13.0}"
stamp="$venv/.installed"
want="$(sha256sum "$repo/pyproject.toml" | cut -c1-16) $torch_spec"

if [ ! -x "$venv/bin/python" ]; then
  echo "creating $venv" >&2
  "${PYTHON:-python3}" -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "installing $torch_spec and fewshot-metaopt[dev] into $venv" >&2
  # torch first, so the package's 'torch>=2.1' is already met and pip pulls no other build.
  # shellcheck disable=SC2086
  "$venv/bin/python" -m pip install -q --disable-pip-version-check $torch_spec
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$repo[dev]"
  echo "$want" > "$stamp"
fi
