#!/usr/bin/env bash
# The test suite as CI runs it: everything on the TensorFlow backend, and the model and backend contracts
# (tests/test_contract.py, tests/test_backends.py) on JAX and on PyTorch, one process per backend. The JAX and
# PyTorch passes run beside the TensorFlow one, which has a pytest-xdist worker per core (much of each pass is
# single-threaded: graph building, compiling, process start-up); they print their output when they end. Extra arguments go to the TensorFlow pass instead of `-m "not slow"`:
# `bash tools/test.sh tests` runs everything, the slow-marked cases (the large variants' extra checks) included;
# `bash tools/test.sh tests/test_dla.py` one file. Uses .venv's Python where there is one (tools/setup.sh makes it).
set -euo pipefail
cd "$(dirname "$0")/.."
python=python
[ -x .venv/bin/python ] && python=.venv/bin/python
if [ $# -eq 0 ]; then set -- -m "not slow"; fi
# The suite starts dozens of Python processes that import TensorFlow, JAX or PyTorch. Where the environment
# sets PYTHONDONTWRITEBYTECODE, each would compile those packages' sources again (tools/setup.sh installs them
# without bytecode): let the first import write the bytecode and the rest read it.
unset PYTHONDONTWRITEBYTECODE
# JAX compiles each random initializer once per kernel shape (most of a JAX build's time); its persistent
# compilation cache keeps those programs between the suite's many processes.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$PWD/.cache/jax}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0}"
export JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="${JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES:-0}"
# Those programs each run a few times: LLVM's optimisation of their machine code costs more than it saves here, and
# backend level 0 skips it (the same arithmetic: XLA's CPU fast math is off by default). TensorFlow applies
# XLA_FLAGS only to what it compiles with XLA (Keras' grouped convolution; `fit` is not XLA-compiled on a CPU).
export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_backend_optimization_level=0"
# One compute thread per process: the passes and workers already share the cores, and a framework's thread pool
# waiting for a core another process holds wastes it. Processes that split the CPU into devices (`--devices N`) set
# their own.
export TF_NUM_INTRAOP_THREADS="${TF_NUM_INTRAOP_THREADS:-1}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}" OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
others=$(mktemp -d)
trap 'rm -rf "$others"' EXIT
declare -A pids
for backend in jax torch; do
  KERAS_BACKEND=$backend $python -m pytest -q --durations=5 -m "not slow" -p no:cacheprovider \
    --basetemp="$others/$backend" tests/test_contract.py tests/test_backends.py >"$others/$backend.log" 2>&1 &
  pids[$backend]=$!
done
echo "tests/test_contract.py and tests/test_backends.py on JAX and PyTorch: running beside this pass; their output follows it"
status=0
# The TensorFlow pass in one worker per core (pytest-xdist; a file's tests stay in one worker, so each module's
# fixtures are built once), longest files first (tests/conftest.py; xdist would order them by test count): much of
# a test is single-threaded, and the two cores stay busy after the other passes end.
workers=$($python -c "import os; print(max(1, min(os.cpu_count() or 1, 4)))")
KERAS_BACKEND=tensorflow $python -m pytest -q --durations=15 -n "$workers" --dist loadfile --no-loadscope-reorder "$@" || status=$?
for backend in jax torch; do
  wait "${pids[$backend]}" || status=1
  echo "===== KERAS_BACKEND=$backend pytest tests/test_contract.py tests/test_backends.py"
  cat "$others/$backend.log"
done
exit $status
