#!/usr/bin/env bash
# One virtual environment per peer, so their dependencies never meet moe_rl's:
#   trl/    torch (CPU) + transformers + TRL      (transformers generate / AdamW step, TRL GRPO)
#   tunix/  google-tunix and the JAX it pins      (Tunix GRPO)
# Usage: bash benchmarks/peers/setup.sh [VENV_DIR]   (default benchmarks/peers/.venvs)
# Idempotent: an environment whose imports already work is left as it is.
# Versions are pinned to the ones timed in benchmarks/README.md; override with the variables below.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENVS="${1:-${PEER_VENVS:-$HERE/.venvs}}"
PYTHON="${PYTHON:-python3}"
TORCH="${TORCH_SPEC:-torch==2.13.0}"  # on the dev machines pip finds its CPU build on local disk
TRANSFORMERS="${TRANSFORMERS_SPEC:-transformers==5.24.0}"
TRL="${TRL_SPEC:-trl==1.16.0}"
TUNIX="${TUNIX_SPEC:-google-tunix==0.1.7}"
mkdir -p "$VENVS"

make_venv() {  # name, import check, pip install steps...
  local name="$1" check="$2"
  shift 2
  local py="$VENVS/$name/bin/python"
  if [ -x "$py" ] && "$py" -c "$check" >/dev/null 2>&1; then
    echo "[setup] $name: ready ($VENVS/$name)"
    return
  fi
  echo "[setup] $name: creating $VENVS/$name"
  "$PYTHON" -m venv "$VENVS/$name"
  local step
  for step in "$@"; do
    # shellcheck disable=SC2086  # each step is a list of requirement specs
    { "$py" -m pip install -q $step 2>&1; } | { grep -v "is ignored: it is neither" || true; }
  done
  "$py" -c "$check"
  echo "[setup] $name: ready"
}

# torch first and pinned: transformers/TRL would otherwise pull a CUDA build from the index.
make_venv trl \
  "import torch, transformers, trl; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__)" \
  "$TORCH" \
  "$TRANSFORMERS $TRL"

make_venv tunix \
  "import jax, tunix, transformers; print('jax', jax.__version__, 'tunix ok')" \
  "$TUNIX transformers safetensors"
