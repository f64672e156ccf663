#!/bin/bash
# The GPU check in one device call, from the repo root:
#   run(command="bash scripts/gpu-check.sh", carry=[".whl"])
# Runs scripts/gpu_check.py (examples, isolation, determinism, latency, first output)
# through scripts/gpu-run.sh, which installs the carried wheels (see there).
exec bash "$(dirname "$0")/gpu-run.sh" scripts/gpu_check.py "$@"
