#!/usr/bin/env bash
# moe_rl against TRL, transformers and Tunix, side by side in one run; prints markdown tables.
#   bash benchmarks/peers/run.sh [run.py flags, e.g. --rounds 3 --steps 5 --only grpo]
# PYTHON: an interpreter with moe_rl installed (pip install -e '.[hf]'); default `python`.
# The peers get their own environments (setup.sh, created on the first run).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENVS="${PEER_VENVS:-$HERE/.venvs}"
bash "$HERE/setup.sh" "$VENVS"
exec "${PYTHON:-python}" "$HERE/run.py" --venvs "$VENVS" "$@"
