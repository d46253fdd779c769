#!/usr/bin/env bash
# The GPU check in one command (a lent GPU machine, ~6 minutes on an H200): the `gpu` tests, then
# SD 1.5-sized fine-tuning / scoring / patch features / the paper's scoring at 256 px and 512 px
# (benchmarks/sd_gpu.py), then every family's full-size denoiser scoring at N = 16 and 100
# (benchmarks/families.py). Logs go to $OUT (default ./gpu-check). The tests run without the
# suite's xdist options (the device image's pytest-xdist may be older). Uses the python3 on the PATH;
# on a machine without gcmine's packages, carried wheels in .whl/ are installed to /tmp/site first.
set -uo pipefail
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
step() {  # step NAME SECONDS CMD...: run with a time limit, log to $OUT/NAME.log, print its time
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  echo "=== $name: $*"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  echo "=== $name: rc ${PIPESTATUS[0]}, $((SECONDS - start)) s"
}
step env 30 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import sys, torch, diffusers; print(sys.version.split()[0], torch.__version__, diffusers.__version__, torch.cuda.get_device_name(0))"'
step pytest_gpu 60 python3 -m pytest -o addopts=-ra -m gpu tests/gcmodels/diffusion/test_cuda_maps.py -q -p no:cacheprovider
step sd256 130 python3 benchmarks/sd_gpu.py --draws 16 100 --batch 128 256 512 --feature-batch 64 128 256
step sd512 100 python3 benchmarks/sd_gpu.py --resolution 512 --images 32 --draws 16 --batch 128 256 --no-reference --feature-batch 64 128 256 --train-steps 10
step sd512_gc 70 python3 benchmarks/sd_gpu.py --resolution 512 --images 8 --draws 4 --batch 64 --no-reference --feature-batch --train-steps 10 --gradient-checkpointing
step families 240 python3 benchmarks/families.py --device cuda --score --images 32
