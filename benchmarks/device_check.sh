#!/usr/bin/env bash
# One markdown table of this machine's speed (backend, matmul peak, MoE layer, pretraining step,
# sampler, GRPO step, peak memory): benchmarks/device_check.py from the repository root.
#   bash benchmarks/device_check.sh [--quick] [--out PATH]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec "${PYTHON:-python}" benchmarks/device_check.py "$@"
