#!/bin/bash
# The GPU check in one device call, from the repo root:
#   run(command="bash scripts/gpu-check.sh", carry=[".whl"])
# .whl holds the wheels the GPU machine lacks, for Python 3.12 (it has no network):
#   black 26.10.1, libcst 1.9.0, platformdirs 4.14.7, pytokens 0.4.1 (see README).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_check_out}
WORK=/tmp/gpu_check
rm -rf "$WORK" && mkdir -p "$OUT" "$WORK/triton" "$WORK/inductor"
# Fresh transpile-time caches: every kernel is compiled here.
export TRITON_CACHE_DIR=$WORK/triton TORCHINDUCTOR_CACHE_DIR=$WORK/inductor
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 scripts/gpu_check.py "$WORK" "$@" 2>&1 | tee "$OUT/log.txt"
rc=${PIPESTATUS[0]}
# The CUDA packages' sources (no cubins), for the golden record.
tar czf "$OUT/cuda_packages.tar.gz" -C "$WORK/gen" --exclude='*.cubin' --exclude='__pycache__' . 2>/dev/null
exit "$rc"
