#!/usr/bin/env bash
# The GPU checks, in one go: the CUDA tests (tests/gpu), then the GPU benchmarks.
#   bash bench/gpu_check.sh            # from the repository root, on a machine with a CUDA GPU
# Logs and bench JSON go to $OUT (default bench/results/gpu). If a folder .whl/ holds
# wheels (for a machine that cannot reach a package index), they are installed first
# into /tmp/site. Environment: PYTEST_S, BENCH_S (time limits), AREAS, REPEATS, EXTRA_TESTS.
set -o pipefail
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
start=$(date +%s)
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > "$OUT/pip.log" 2>&1 || { tail -20 "$OUT/pip.log"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, mlflow, ot; print('torch', torch.__version__, 'mlflow', mlflow.__version__, 'pot', ot.__version__, torch.cuda.get_device_name())" || exit 1
timeout "${PYTEST_S:-180}" python3 -m pytest -q -p no:cacheprovider -s -ra tests/gpu ${EXTRA_TESTS:-} 2>&1 \
  | tee "$OUT/pytest_gpu.log" | tail -25
echo "tests done at $(( $(date +%s) - start )) s"
for area in ${AREAS:-measures training}; do
  timeout "${BENCH_S:-170}" python3 -m bench --device cuda --only "$area" --repeats "${REPEATS:-3}" \
    --json "$OUT/bench_$area.json" > "$OUT/bench_$area.log" 2> "$OUT/bench_$area.err"
  echo "bench $area rc=$? at $(( $(date +%s) - start )) s"
  cat "$OUT/bench_$area.log"
done
