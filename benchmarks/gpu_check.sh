#!/usr/bin/env bash
# The prepared GPU check on a lent machine (docs/benchmarks.md, "GPU check"):
#   bash benchmarks/gpu_check.sh [OUT_DIR] [gpu_check.py flags...]
# OUT_DIR defaults to $OUT (the device tool's folder), else output/gpu_check. Python packages
# the machine lacks are installed from the wheels carried in .whl/ (into /tmp/site, first on
# PYTHONPATH); then gpu_check.py runs unbuffered and its log lands beside the figures.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then out="$1"; shift; else out="${OUT:-output/gpu_check}"; fi
py="${PYTHON:-python3}"
mkdir -p "$out" || exit 1

missing() {  # the import names requirements.txt needs that this interpreter cannot find
  "$py" - <<'EOF'
import importlib.util
mods = ('jax', 'flax', 'optax', 'orbax.checkpoint', 'tensorboardX', 'absl', 'ml_collections',
        'numpy', 'matplotlib', 'tqdm', 'pyarrow')
print(' '.join(m for m in mods if importlib.util.find_spec(m.split('.')[0]) is None))
EOF
}

lack="$(missing)"
if [ -n "$lack" ]; then
  if compgen -G ".whl/*.whl" > /dev/null; then
    echo "installing carried wheels for: $lack"
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    lack="$(missing)"
  fi
  if [ -n "$lack" ]; then
    echo "missing Python packages: $lack; carry their wheels in .whl/ (docs/benchmarks.md)" >&2
    exit 1
  fi
fi
"$py" -c 'import jax; print("jax", jax.__version__, jax.devices())' || exit 1
export PYTHONUNBUFFERED=1
"$py" benchmarks/gpu_check.py --out="$out" "$@" 2>&1 | tee "$out/gpu_check.log"
