#!/usr/bin/env bash
# The GPU acceptance check (issue 23) on a fresh GPU machine, from a copy of the working tree:
#   bash benchmarks/gpu_acceptance.sh OUT_DIR [options of benchmarks.gpu_acceptance]
# Installs the pure-Python packages the image lacks from the wheel cache .whl/ (made with
# `make gpu-wheels` where pip has network, see BENCHMARKS.md) into /tmp/site, uses the
# machine's own torch, then runs `python -m benchmarks gpu_acceptance -- --out OUT_DIR`
# (8 minutes at most by default) and keeps its log beside the JSON and markdown it writes.
set -uo pipefail
OUT=${1:?usage: bash benchmarks/gpu_acceptance.sh OUT_DIR [--budget SECONDS]}
shift
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 3
    export PYTHONPATH="/tmp/site:$PWD"
else
    export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1
"$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
"$PY" -m benchmarks gpu_acceptance -- --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_acceptance.log"
