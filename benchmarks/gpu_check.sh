#!/usr/bin/env bash
# The GPU checks in one go: the CUDA tests of the pure-torch core, then the views, training-step
# and memory benchmarks. Needs torch, torchvision, kornia, pydantic, pyyaml, pytest (no Ray, no MLflow).
#   bash benchmarks/gpu_check.sh [OUT_DIR]
set -uo pipefail
out=$(realpath -m "${1:-gpu-check}")
mkdir -p "$out"
export PYTHONPATH=$PWD/platform${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision, kornia; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'kornia', kornia.__version__, 'cuda', torch.version.cuda)"
status=0
python3 -m pytest -q -p no:cacheprovider tests/test_moco_step.py tests/test_views.py tests/test_tps.py \
    tests/test_losses.py tests/test_moco.py tests/test_hypercolumn.py tests/test_backbones.py tests/test_heads.py \
    tests/test_metrics.py tests/test_geometry.py 2>&1 | tee "$out/tests.log" || status=1
cd benchmarks
python3 views.py --out "$out/views.json" || status=1
python3 train.py --modes plain --out "$out/train.json" || status=1
python3 train.py --modes plain --views off --backbones resnet50 --out "$out/train-off.json" || status=1
python3 memory.py --device cuda --out "$out/memory.json" || status=1
exit $status
