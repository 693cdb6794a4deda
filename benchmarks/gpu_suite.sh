#!/usr/bin/env bash
# The GPU measurements, on a machine with an NVIDIA GPU:
#   1. engine speed on CUDA: the looped func engine against the vmapped one (ours-func,
#      ours-func-vmap) on every workload of benchmarks/engine_speed.py;
#   2. TRAIN_MINUTES (8) of the Omniglot 5-way 1-shot paper protocol (tasks/omniglot-5w1s.toml) with
#      the command line, ending with its test accuracy on 600 episodes.
# Everything it writes goes under OUT_DIR (default runs/gpu-suite-<date>-<time>):
#
#   bash benchmarks/gpu_suite.sh [OUT_DIR]
#
# The venv gets a CUDA build of torch: TORCH_SPEC (default torch==2.14.1) as .ci/setup-venv.sh
# reads it; FEWSHOT_METAOPT_VENV picks the venv (default .venv). On a machine whose Python already
# holds a CUDA build of torch and has no package index, SUITE_PYTHON=python3 uses that interpreter
# instead of a venv, with the package from this checkout (PYTHONPATH) and the one dependency such
# images lack, higher, installed from the wheels in WHEELS (a folder) when it is missing.
# OMNIGLOT_ROOT is the Omniglot folder (default ../shared/data/omniglot beside the checkout, as in
# README.md); TRAIN_MINUTES the training budget per precision (default 8).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
me="gpu_suite.sh"

# The precisions measured: engine speed reports a row per engine and precision, and training
# runs once per precision (learner.precision).
PRECISIONS="fp32 bf16 fp16"

out="${1:-$repo/runs/gpu-suite-$(date +%Y%m%d-%H%M%S)}"
if [ -n "$(ls -A "$out" 2>/dev/null)" ]; then
  echo "$me: $out is not empty; give a new folder as the first argument" >&2
  exit 1
fi
# A CUDA build of torch is several GB: a machine with no NVIDIA driver is turned away first.
if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "$me: no GPU visible (nvidia-smi finds none); run it on a machine with an NVIDIA GPU and driver" >&2
  exit 1
fi
data_root="${OMNIGLOT_ROOT:-$repo/../shared/data/omniglot}"
if [ ! -e "$data_root/images_background.zip" ] && [ ! -d "$data_root/images_background" ]; then
  echo "$me: no Omniglot in $data_root (images_background.zip); set OMNIGLOT_ROOT to the folder holding it" >&2
  exit 1
fi

minutes="${TRAIN_MINUTES:-8}"
if [ -n "${SUITE_PYTHON:-}" ]; then
  python="$SUITE_PYTHON"
  if ! "$python" -c 'import higher' 2>/dev/null; then
    "$python" -m pip install -q --no-deps --no-index --find-links "${WHEELS:?SUITE_PYTHON needs WHEELS, a folder with the higher wheel}" higher
  fi
  export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
else
  export TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1}"
  bash "$repo/.ci/setup-venv.sh"
  venv="${FEWSHOT_METAOPT_VENV:-$repo/.venv}"
  python="$venv/bin/python"
fi
if [ "$("$python" -c 'import torch; print(torch.cuda.is_available())')" != "True" ]; then
  echo "$me: torch $("$python" -c 'import torch; print(torch.__version__)') sees no GPU" \
       "(torch.cuda.is_available() is False); set TORCH_SPEC to a CUDA build that matches the driver" >&2
  exit 1
fi
mkdir -p "$out"
out="$(cd "$out" && pwd)"
data_root="$(cd "$data_root" && pwd)"

cd "$repo"
{
  nvidia-smi
  "$python" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name())'
  git rev-parse HEAD 2>/dev/null || true
  git status --short 2>/dev/null || true
} > "$out/machine.txt" 2>&1

echo "== engine speed, precisions $PRECISIONS" >&2
PYTHONPATH="$repo" "$python" benchmarks/engine_speed.py --device cuda --workloads all \
  --engines ours-func,ours-func-vmap --precision "${PRECISIONS// /,}" --json "$out/engine-speed.json" \
  2>&1 | tee "$out/engine-speed.txt"

for p in $PRECISIONS; do
  precision_set=()
  if [ "$p" != "fp32" ]; then
    precision_set=(--set "learner.precision=$p")
  fi
  echo "== omniglot-5w1s, $minutes minutes, $p" >&2
  "$python" -m fewshot_metaopt.cli train tasks/omniglot-5w1s.toml --set "train.minutes=$minutes" \
    ${precision_set[@]+"${precision_set[@]}"} --device cuda --data-root "$data_root" \
    --out "$out/omniglot-5w1s-$p" 2>&1 | tee "$out/omniglot-5w1s-$p.txt"
done
echo "$me: done; results in $out" >&2
