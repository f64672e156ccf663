#!/bin/bash
# The CUDA spike in one device call, from the repo root:
#   run(command="bash scripts/gpu_spike.sh", carry=[".whl"])
# .whl holds libcst for Python 3.12 (the GPU machine has no libcst and no network):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .whl libcst==1.9.0
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/spike_out}
mkdir -p "$OUT"
WORK=/tmp/spike
rm -rf "$WORK"
mkdir -p "$WORK/build_triton" "$WORK/build_inductor" "$WORK/torch_src"
# The transpile-time caches: fresh, so every kernel is compiled and autotuned here.
export TRITON_CACHE_DIR=$WORK/build_triton TORCHINDUCTOR_CACHE_DIR=$WORK/build_inductor TORCHINDUCTOR_COMPILE_THREADS=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, triton, sys; print('torch', torch.__version__, 'triton', triton.__version__, sys.version.split()[0])"
python3 scripts/gpu_spike.py all "$WORK" 2>&1 | tee "$OUT/log.txt"
rc=${PIPESTATUS[0]}
# Device-side torch sources, to read offline.
python3 - "$WORK/torch_src" <<'PY'
import os, shutil, sys, torch
root = os.path.dirname(torch.__file__)
for rel in ("_inductor/runtime/static_triton_launcher.py", "_inductor/runtime/static_cuda_launcher.py",
            "_inductor/runtime/triton_heuristics.py", "_inductor/codegen/wrapper.py", "_inductor/async_compile.py",
            "_inductor/runtime/runtime_utils.py", "_inductor/runtime/cache_dir_utils.py"):
    path = os.path.join(root, rel)
    if os.path.isfile(path):
        shutil.copy(path, os.path.join(sys.argv[1], rel.replace("/", "__")))
PY
ls -la "$WORK/build_triton" | head -5
cp "$WORK"/summary.txt "$WORK"/build.json "$WORK"/check.json "$OUT"/ 2>/dev/null
tar czf "$OUT/spike.tar.gz" -C "$WORK" --exclude='fresh_*' --exclude='build_*' .
exit "$rc"
