#!/usr/bin/env bash
# The main job: sets up .venv if needed, then meta-trains the quick-start task embedded in the
# package (`fewshot-metaopt train` with no task file: Meta-SGD on the generated Glyphs data set,
# 5-way 1-shot) into runs/glyphs-quickstart-<date>-<time>/ and prints the test accuracy ± 95% CI
# on 600 fixed episodes. Extra arguments go to `fewshot-metaopt train` (see docs/cli.md), e.g.
#   bash benchmarks/quickstart.sh --set train.iterations=100
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/.ci/setup-venv.sh"
cd "$repo"
# One torch thread: on two cores shared with other work, two threads waiting on each other ran
# many times slower than one (seen: 5-13 s per iteration against 0.6 s); a later --threads wins.
exec "${FEWSHOT_METAOPT_VENV:-$repo/.venv}/bin/fewshot-metaopt" train --threads 1 "$@"
