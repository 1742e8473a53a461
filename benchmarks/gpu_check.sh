#!/usr/bin/env bash
# The GPU checks in one go, most informative first, each under its own time limit so that a
# device session that runs out still returns what finished: the CUDA tests of the pure-torch
# core, then training-step throughput (batch, views, torch.compile), views, memory.
# Needs torch, torchvision, kornia, pydantic, pyyaml, pytest (no Ray, no MLflow).
#   bash benchmarks/gpu_check.sh [OUT_DIR [STEP...]]     (STEPs: run only these, e.g. tests views-b1024)
set -uo pipefail
out=$(realpath -m "${1:-gpu-check}")
only=" ${*:2} "
mkdir -p "$out"
export PYTHONPATH=$PWD/platform${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, torchvision, kornia; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'kornia', kornia.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
status=0
step() {  # step NAME SECONDS CMD...: run CMD with a time limit, log to OUT/NAME.log
    local name=$1 limit=$2; shift 2
    [[ "$only" == "  " || "$only" == *" $name "* ]] || return 0
    echo "== $name: $*"
    local t0=$SECONDS
    timeout "$limit" "$@" > "$out/$name.log" 2>&1 || { echo "!! $name failed or passed ${limit}s"; status=1; }
    tail -n 6 "$out/$name.log"; echo "   ($((SECONDS - t0)) s)"
}
step tests 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_moco_step.py tests/test_views_ahead.py tests/test_views.py tests/test_jpeg.py tests/test_tps.py \
    tests/test_losses.py tests/test_moco.py tests/test_hypercolumn.py tests/test_backbones.py tests/test_heads.py \
    tests/test_metrics.py tests/test_geometry.py
cd benchmarks
r50="--modes plain --backbones resnet50 --batch-size 1024"
# Issue 25 first: the full step with the views serial / one batch ahead against the network alone,
# then where JPEG decoding should run on a GPU node.
step r50-b1024-overlap-compile 300 python3 train.py $r50 --views off,on,ahead --compile default --out "$out/r50-b1024-overlap-compile.json"
step decode 120 python3 decode.py --batch-size 1024 --num-images 4096 --out "$out/decode.json"
step views-b1024 90 python3 views.py --batch-size 1024 --canvas-steps 32,128 --jpeg-backends torch,kornia --out "$out/views-b1024.json"
step r50-b1024 90 python3 train.py $r50 --views on,ahead --out "$out/r50-b1024.json"
step all-b256 120 python3 train.py --modes plain --out "$out/all-b256.json"
step r50-b1024-off 90 python3 train.py $r50 --views off --out "$out/r50-b1024-off.json"
step r50-b1024-off-graphs 180 python3 train.py $r50 --views off --compile reduce-overhead --out "$out/r50-b1024-off-graphs.json"
step memory 60 python3 memory.py --device cuda --out "$out/memory.json"
exit $status
