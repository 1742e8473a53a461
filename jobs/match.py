"""Landmark matching with frozen descriptors: same identity (TPS-warped pairs) and different identity.

    python jobs/match.py --config jobs/configs/match_synthetic_cpu.yaml data.path=data/synthetic-faces
    python jobs/match.py --config jobs/configs/match_mafl.yaml data.path=... backbone.source=<run id> \
        representation=projected projector.source=<train_projector run id> projector.dim=128
"""

import sys

from landmarks.cli import job_main
from landmarks.train.configs import MatchConfig
from landmarks.train.match import run_match

if __name__ == "__main__":
    sys.exit(job_main(MatchConfig, run_match, __doc__))
