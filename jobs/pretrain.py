"""MoCo pretraining on Ray Train (DDP across workers and nodes), resumable, fault tolerant.

    python jobs/pretrain.py --config jobs/configs/pretrain_synthetic_cpu.yaml data.path=data/faces
    ray job submit --working-dir . -- python jobs/pretrain.py --config jobs/configs/pretrain_celeba_r50.yaml
"""

import sys

from landmarks.cli import main

if __name__ == "__main__":
    sys.exit(main("pretrain", __doc__))
