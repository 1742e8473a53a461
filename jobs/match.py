"""Landmark matching with frozen descriptors: same identity (TPS-warped pairs) and different identity.

    python jobs/match.py --config jobs/configs/match_synthetic_cpu.yaml data.path=data/synthetic-faces
    python jobs/match.py --config jobs/configs/match_mafl.yaml data.path=... backbone.source=<run id> \
        representation=projected projector.source=<train_projector run id> projector.dim=128
"""

import sys

from landmarks.cli import main

if __name__ == "__main__":
    sys.exit(main("match", __doc__))
