#!/bin/bash
# Run one GPU script in a device call, from the repo root:
#   run(command="bash scripts/gpu-run.sh scripts/gpu_state_check.py --big", carry=[".whl"])
# .whl holds the wheels the GPU machine lacks, for Python 3.12 (it has no network):
#   black 26.10.1, libcst 1.9.0, platformdirs 4.14.7, pytokens 0.4.1 (see README).
# The script gets a scratch folder as its first argument; packages it writes under
# SCRATCH/gen come back as $OUT/cuda_packages.tar.gz (sources, no cubins).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# NVLink multicast stays off on the lent machines (also in processes started from here).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/gpu_out}
WORK=/tmp/gpu_work
rm -rf "$WORK" && mkdir -p "$OUT" "$WORK/triton" "$WORK/inductor"
# Fresh transpile-time caches: every kernel is compiled here.
export TRITON_CACHE_DIR=$WORK/triton TORCHINDUCTOR_CACHE_DIR=$WORK/inductor
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
# Several scripts in one call share the scratch folder: SCRIPT ARGS... [--then SCRIPT ARGS...]
rc=0
while [ $# -gt 0 ]; do
  script=$1; shift
  args=()
  while [ $# -gt 0 ] && [ "$1" != "--then" ]; do args+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  python3 "$script" "$WORK" "${args[@]}" 2>&1 | tee "$OUT/$(basename "$script" .py).log"
  [ "${PIPESTATUS[0]}" -ne 0 ] && rc=1
done
# Sources only: no cubins, and no large weights (a 1B package's 2 GB would not come back).
(cd "$WORK/gen" 2>/dev/null && find . -type f ! -name '*.cubin' ! -path '*__pycache__*' -size -4M -print0 |
  tar czf "$OUT/cuda_packages.tar.gz" --null -T -) 2>/dev/null
exit "$rc"
