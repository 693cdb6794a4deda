#!/usr/bin/env bash
# The main job: sets up .venv if needed, then runs the quick-start benchmark on embedded Glyphs.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/.ci/setup-venv.sh"
exec "${FEWSHOT_METAOPT_VENV:-$repo/.venv}/bin/python" "$repo/benchmarks/quickstart.py" "$@"
