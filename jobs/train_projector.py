"""Train the 1x1 equivariance projector of a frozen backbone's hypercolumn (Ray Train DDP).

    python jobs/train_projector.py --config jobs/configs/train_projector_synthetic_cpu.yaml data.path=data/synthetic-faces
    python jobs/train_projector.py --config jobs/configs/train_projector_celeba_r50.yaml backbone.source=<run id> projector.dim=64
"""

import sys

from landmarks.cli import main

if __name__ == "__main__":
    sys.exit(main("train_projector", __doc__))
