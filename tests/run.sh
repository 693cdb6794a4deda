#!/usr/bin/env bash
# Sets up .venv if needed, checks the layer rules (import-linter contracts in pyproject.toml),
# then runs the whole suite with the coverage bar, one pytest worker per core (PYTEST_WORKERS
# overrides). Extra arguments go to pytest (`bash tests/run.sh -k omniglot`).
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/.ci/setup-venv.sh" || exit 1
cd "$repo"
venv="${FEWSHOT_METAOPT_VENV:-$repo/.venv}"
"$venv/bin/lint-imports" --no-cache || { echo "tests/run.sh: an import breaks a layer rule (docs/architecture.md)" >&2; exit 1; }
"$venv/bin/python" -m pytest \
  -n "${PYTEST_WORKERS:-auto}" \
  --cov=fewshot_metaopt --cov-report=term-missing:skip-covered --cov-fail-under=95 "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "tests/run.sh: pytest collected no tests; that is a failure, not a pass" >&2
fi
exit "$rc"
