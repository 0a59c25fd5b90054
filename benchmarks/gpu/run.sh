#!/usr/bin/env bash
# One-command GPU check: build/install deltairis offline, run the `gpu` tests, the fused-op and model
# benchmarks, the Triton interpreter tests, and write a JSON report (device name included) under $OUT.
#
#   OUT=/some/dir bash benchmarks/gpu/run.sh
#
# Works on a bare GPU machine with PyTorch + Triton and no network:
#   * the package is installed with `pip install --no-build-isolation --no-deps --no-index .` when the
#     build tools (scikit-build-core, pybind11, cmake) are present; otherwise the pure-Python package
#     and the kernels are staged into a temporary folder on PYTHONPATH (no C++ extension: tests that
#     need deltairis._core then fail or skip, which the report shows);
#   * pytest / pytest-benchmark are used when installed; bench_ops.py also runs without them.
# Every step has a time limit and the whole script stays under TOTAL_BUDGET_S (default 540 s); the
# report is rewritten after each step, so a run that is cut short still leaves its figures.
# Environment: OUT (default ./gpu-report), PYTHON (default python3), TOTAL_BUDGET_S, SKIP_STEPS
# (space-separated step names to skip: install gpu_tests bench_epoch bench_ops bench_models profile_ac
# bench_reference bench_train interpreter_tests), REFERENCE_DIR (an extracted vmicheli/delta-iris for the
# bench_reference step, default third_party/delta-iris; the step is skipped when it is missing; the
# reference also needs einops), BENCH_EPOCH_SCALE (fraction of the full Crafter epoch that bench_epoch
# runs, default 0.1: 1,008 env steps and 50 steps of every component, extrapolated to the full epoch),
# WHEELS_DIR (a folder of pure-Python wheels, e.g. hydra-core, omegaconf, gymnasium, crafter, for a
# machine without a package index: installed with --target into a temporary folder put on PYTHONPATH),
# STEP_LIMITS (e.g. "install=200 gpu_tests=150" to change a step's own limit).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/gpu-report}"
mkdir -p "$OUT"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
BUDGET="${TOTAL_BUDGET_S:-540}"
SKIP_STEPS="${SKIP_STEPS:-}"
START=$(date +%s)
STEPS="$OUT/steps.tsv"
: > "$STEPS"
export PYTHONDONTWRITEBYTECODE=1
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"

remaining() { echo $(( BUDGET - ($(date +%s) - START) )); }

# step NAME LIMIT_S CMD...: run with a time limit (capped by the remaining budget), log, record rc.
step() {
  local name="$1" limit="$2"; shift 2
  local kv
  for kv in ${STEP_LIMITS:-}; do [[ "${kv%%=*}" == "$name" ]] && limit="${kv#*=}"; done
  if [[ " $SKIP_STEPS " == *" $name "* ]]; then
    printf '%s\t%s\t%s\n' "$name" "skipped" "0" >> "$STEPS"; return 0
  fi
  local left; left=$(remaining)
  (( left < limit )) && limit=$left
  if (( limit < 10 )); then
    printf '%s\t%s\t%s\n' "$name" "no-time" "0" >> "$STEPS"; return 0
  fi
  echo "== $name (limit ${limit}s)"
  local t0; t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" >> "$STEPS"
  tail -n 15 "$OUT/$name.log"
  report
  return 0
}

report() {
  "$PY" "$ROOT/benchmarks/gpu/report.py" --out "$OUT" --install-mode "${INSTALL_MODE:-none}" \
    > "$OUT/report.log" 2>&1 || cat "$OUT/report.log"
}

has_module() { "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)"; }

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true

# 0) Offline wheels for the pure-Python dependencies the image lacks.
if [[ -n "${WHEELS_DIR:-}" ]] && compgen -G "$WHEELS_DIR/*.whl" > /dev/null; then
  SITE="$(mktemp -d)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS_DIR"/*.whl \
    > "$OUT/wheels.log" 2>&1 && export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  echo "== wheels from $WHEELS_DIR -> $SITE (rc $?)"
fi

# 1) Install.
INSTALL_MODE=none
if [[ " $SKIP_STEPS " != *" install "* ]] && has_module scikit_build_core && has_module pybind11 \
    && command -v cmake > /dev/null; then
  step install 240 "$PY" -m pip install --no-build-isolation --no-deps --no-index -q "$ROOT"
  if [[ "$(tail -n 1 "$STEPS" | cut -f2)" == "0" ]]; then INSTALL_MODE=pip; fi
fi
if [[ "$INSTALL_MODE" != pip ]] && ! (cd /tmp && "$PY" -c "import deltairis.kernels" 2> /dev/null); then
  STAGE="$(mktemp -d)"
  cp -r "$ROOT/python/deltairis" "$STAGE/deltairis"
  mkdir -p "$STAGE/deltairis/kernels"
  cp "$ROOT"/kernels/*.py "$STAGE/deltairis/kernels/"
  export PYTHONPATH="$STAGE${PYTHONPATH:+:$PYTHONPATH}"
  INSTALL_MODE=staged-python-only
  echo "== install: staged the pure-Python package at $STAGE (no C++ extension)"
elif [[ "$INSTALL_MODE" != pip ]]; then
  INSTALL_MODE=preinstalled
fi
report

# 2) GPU tests (compiled Triton). Collection errors in areas whose dependencies are missing here must
#    not stop the GPU tests of the others.
if has_module pytest; then
  step gpu_tests 240 "$PY" -m pytest tests -m gpu -q -rs -p no:cacheprovider --continue-on-collection-errors \
    --junitxml="$OUT/junit_gpu_tests.xml"
else
  printf '%s\t%s\t%s\n' gpu_tests "pytest-missing" 0 >> "$STEPS"
fi

# 2b) End-to-end epoch through the Trainer at the real Crafter preset (native Crafter, 16 envs), scaled,
#     with per-phase times, the checkpoint, peak memory and the full-epoch estimate (needs hydra-core,
#     omegaconf and the C++ extension for native Crafter).
step bench_epoch 150 "$PY" "$ROOT/benchmarks/bench_epoch.py" --preset crafter --device cuda \
  --scale "${BENCH_EPOCH_SCALE:-0.1}" --json "$OUT/bench_epoch.json"

# 3) Fused-op benchmarks (standalone: CUDA events, no pytest needed).
step bench_ops 180 "$PY" "$ROOT/benchmarks/bench_ops.py" --json "$OUT/bench_ops.json"

# 4) Model / imagination benchmarks (pytest-benchmark suite written by the model owners).
if [[ -f "$ROOT/benchmarks/bench_models.py" ]] && has_module pytest && has_module pytest_benchmark; then
  step bench_models 240 "$PY" -m pytest "$ROOT/benchmarks/bench_models.py" -q -p no:cacheprovider \
    --benchmark-only --benchmark-json="$OUT/bench_models.json"
else
  printf '%s\t%s\t%s\n' bench_models "not-run(missing file, pytest or pytest-benchmark)" 0 >> "$STEPS"
fi

# 4b) Operator profile of one actor-critic update per backend (crafter preset, full batch).
step profile_ac 150 "$PY" "$ROOT/benchmarks/gpu/profile_ac.py" --preset crafter --out "$OUT"

# 4c) One optimizer step of each component, ours vs the reference implementation, same process, same
#     shapes (Crafter preset). The reference is not part of the repository: extract it into
#     third_party/delta-iris (ignored; carried to the GPU machine with the working tree) or set REFERENCE_DIR.
REFERENCE_DIR="${REFERENCE_DIR:-$ROOT/third_party/delta-iris}"
if [[ -d "$REFERENCE_DIR/src/models" ]]; then
  step bench_reference 120 "$PY" "$ROOT/benchmarks/gpu/bench_reference.py" --reference "$REFERENCE_DIR" \
    --device cuda --time-budget 70 --json "$OUT/bench_reference.json"
else
  echo "== bench_reference: skipped, no reference implementation at $REFERENCE_DIR" \
    "(git clone https://github.com/vmicheli/delta-iris third_party/delta-iris)"
  printf '%s\t%s\t%s\n' bench_reference "skipped(no reference at $REFERENCE_DIR)" 0 >> "$STEPS"
fi

# 5) Training-pipeline benchmarks (tiny preset on the toy env; needs hydra-core, omegaconf, gymnasium).
if [[ -f "$ROOT/benchmarks/bench_train.py" ]] && has_module pytest && has_module pytest_benchmark; then
  step bench_train 150 "$PY" -m pytest "$ROOT/benchmarks/bench_train.py" -q -p no:cacheprovider \
    --benchmark-only --benchmark-json="$OUT/bench_train.json"
else
  printf '%s\t%s\t%s\n' bench_train "not-run(missing file, pytest or pytest-benchmark)" 0 >> "$STEPS"
fi

# 6) Triton interpreter tests (CPU tensors), in their own process: Triton's mode is fixed at import.
if has_module pytest; then
  TRITON_INTERPRET=1 step interpreter_tests 150 "$PY" -m pytest tests/ops -m "not gpu" -q -p no:cacheprovider \
    --junitxml="$OUT/junit_interpreter_tests.xml"
fi

report
echo "== report: $OUT/gpu_report.json"
cat "$OUT/steps.tsv"
