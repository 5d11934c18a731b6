#!/usr/bin/env bash
# One markdown table of this machine's speed (backend, matmul peak, MoE layer, pretraining step,
# sampler, GRPO step, peak memory): benchmarks/device_check.py, run from the repository root.
#   bash benchmarks/device_check.sh [--quick] [--out PATH]
# A relative --out, and the default device_check.md, are in the directory it was called from.
set -euo pipefail
export DEVICE_CHECK_CALLER_DIR="$PWD"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec "${PYTHON:-python}" benchmarks/device_check.py "$@"
