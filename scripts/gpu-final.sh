#!/bin/bash
# The serving example's GPU run (issues 16 and 18) in ONE device call on one H200, from the
# repo root (all stages take about 11 minutes: name the ones a call should run):
#   run(command="bash scripts/gpu-final.sh [STAGE ...]", carry=[".whl"], timeout_s=600)
# .whl holds the wheels the GPU machine lacks, for Python 3.12 (no network there): black,
# libcst, platformdirs, pytokens (see scripts/gpu-run.sh and the README).
# On a CPU machine, `bash scripts/gpu-final.sh --dry-run` runs every stage's CPU dry run.
#
# Stages, in order (all by default; or those named), each under its own time budget (`timeout`; a stage that runs out is
# reported and the next one starts), logs in $OUT/NN-stage.log and a summary in
# $OUT/summary.txt:
#   1. paged_attention  (90 s): scripts/gpu_paged_attention_check.py --no-time: the Triton
#      kernels against the reference op, bf16 and fp32, and a CUDA graph replayed on new metadata.
#   2. serving_graphs  (150 s): scripts/gpu_state_check.py --no-timings: a --device cuda
#      transpile of the serving example at its tiny fp32 config, then the engine loop's mixed
#      batches (prefill chunks beside decodes, 1-6 sequences, padded and unpadded sizes)
#      through the package plain, with piecewise and with full CUDA graphs beside eager on
#      its own cache: logits and cache within 1e-4 of eager's scale at every step.
#   3. bench_1b        (260 s): scripts/gpu_bench.py, the 1.1B bf16 config: eager,
#      torch.compile, and the package plain, piecewise and full; decode N (one sequence),
#      decode Nx1 (N sequences) and prefill cases; floor = weights + KV read per step over
#      the measured copy bandwidth. reduce-overhead and max-autotune are left out (200+ s).
#   4. examples        (200 s): scripts/gpu_check.py, stages transpile, correct, determinism:
#      the CUDA examples (tiny_llama is the CUDA golden: its sources come back in
#      cuda_packages.tar.gz for `scripts/regen-goldens --cuda-from-gpu`) equal to eager.
#   5. capture_time    (130 s): scripts/gpu_capture_time.py --runs 1: capture() after load()
#      for every default capture size, both modes, and lazily (first calls).
#   6. autotune_1b     (450 s, not in the default list: name it): scripts/gpu_bench.py
#      --autotune: the 1.1B transpiled with --autotune (on one process: benchmarks in parallel
#      processes would time each other) beside the default package, full
#      graphs at decode sizes; the lockfile comes back as tuning-serving_llama_1b.json.
#   7. profile         (120 s, named only): scripts/gpu_profile_decode.py, decode steps of 1
#      and 8x1 tokens, plain and replayed from full CUDA graphs: where the GPU time goes.
set -u
DRY_RUN=0
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1 && shift
STAGES=" ${*:-paged_attention serving_graphs bench_1b examples capture_time} "
OUT=${OUT:-/tmp/gpu_out}
WORK=/tmp/gpu_work
[ "$DRY_RUN" = 1 ] && WORK=$(mktemp -d)  # a shared CPU machine: a scratch folder of its own
rm -rf "$WORK" && mkdir -p "$OUT" "$WORK/triton" "$WORK/inductor"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
started=$(date +%s)

if [ "$DRY_RUN" = 0 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$SUMMARY"
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
# NVLink multicast stays off on the lent machines (also in processes started from here).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# Fresh transpile-time caches: every kernel is compiled here.
[ "$DRY_RUN" = 0 ] && export TRITON_CACHE_DIR=$WORK/triton TORCHINDUCTOR_CACHE_DIR=$WORK/inductor

rc=0
# stage NUMBER NAME BUDGET_SECONDS COMMAND...: run it under its budget, log it, summarise it.
stage() {
  local number=$1 name=$2 budget=$3
  shift 3
  [[ "$STAGES" == *" $name "* ]] || return 0
  local log="$OUT/$number-$name.log" begin status
  begin=$(date +%s)
  echo "== $number $name (budget ${budget} s): $*" | tee "$log"
  timeout --signal=TERM --kill-after=10 "$budget" "$@" 2>&1 | tee -a "$log"
  status=${PIPESTATUS[0]}
  local took=$(( $(date +%s) - begin ))
  if [ "$status" = 0 ]; then
    echo "PASS $number $name in ${took} s" | tee -a "$SUMMARY"
  elif [ "$status" = 124 ] || [ "$status" = 137 ]; then
    echo "TIMEOUT $number $name after ${took} s (budget ${budget} s): see $log" | tee -a "$SUMMARY"
    rc=1
  else
    echo "FAIL $number $name (exit $status) in ${took} s: see $log" | tee -a "$SUMMARY"
    rc=1
  fi
}

if [ "$DRY_RUN" = 0 ]; then
  stage 1 paged_attention 90 python3 scripts/gpu_paged_attention_check.py --no-time
  stage 2 serving_graphs 150 python3 scripts/gpu_state_check.py "$WORK" --no-timings
  stage 3 bench_1b 260 python3 scripts/gpu_bench.py "$WORK" --rounds 1 --repeats 10 --jobs 16 --variant-timeout 120 \
    --variants "eager,torch.compile,package,package + piecewise graphs,package + full graphs"
  stage 4 examples 200 python3 scripts/gpu_check.py "$WORK" --stages transpile,correct,determinism
  stage 5 capture_time 130 python3 scripts/gpu_capture_time.py "$WORK" --runs 1
  stage 6 autotune_1b 450 python3 scripts/gpu_bench.py "$WORK" --rounds 1 --repeats 10 --variant-timeout 120 \
    --autotune --variants "package + full graphs" --cases "decode 1,decode 8,decode 64,decode 8x1,decode 64x1,prefill 512"
  stage 7 profile 120 bash -c "python3 scripts/gpu_profile_decode.py '$WORK' 1 8x1 && python3 scripts/gpu_profile_decode.py '$WORK' 1 8x1 --graphs=full"
else
  stage 1 paged_attention 60 python3 scripts/gpu_paged_attention_check.py --dry-run
  stage 2 serving_graphs 150 python3 scripts/gpu_state_check.py "$WORK" --dry-run
  stage 3 bench_1b 300 python3 scripts/gpu_bench.py "$WORK" --dry-run
fi
echo "total $(( $(date +%s) - started )) s" | tee -a "$SUMMARY"
# Package sources only (no cubins, no weights) come back.
(cd "$WORK/gen" 2>/dev/null && find . -type f ! -name '*.cubin' ! -path '*__pycache__*' -size -4M -print0 |
  tar czf "$OUT/cuda_packages.tar.gz" --null -T -) 2>/dev/null
exit "$rc"
