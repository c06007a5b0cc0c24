#!/usr/bin/env bash
# Every GPU measurement issue 15 asks for, in one run on a device machine (one command of
# the `device` tool, about 9 minutes on an H200): the CUDA tests, Tiny-LIC's training step,
# attention and real coding with each attention backend, and the coding against CompressAI.
#
#     PY=python3 bash benchmarks/device_issue15.sh      # logs and BENCHMARKS.md in $OUT
#
# Each part runs under its own time limit and logs to $OUT/<part>.log; a part that fails
# does not stop the others. The benchmarks rewrite their BENCHMARKS.md sections (-cuda /
# -flex suffixes), and the file is copied to $OUT to be merged here.
set -u
OUT=${OUT:-/tmp/device-out}
PY=${PY:-.venv/bin/python}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT"

part() {
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "$name: exit $? in $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/summary.txt" 2>&1
part gpu_tests 150 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
part tiny_lic_auto 150 "$PY" benchmarks/tiny_lic.py --device cuda --steps 10 --warmup 3
part tiny_lic_flex 150 "$PY" benchmarks/tiny_lic.py --device cuda --attention flex --steps 10 --warmup 3
part coding_cuda 90 "$PY" benchmarks/coding.py --device cuda --limit 8 --repeats 3
cp BENCHMARKS.md "$OUT/BENCHMARKS.md"
