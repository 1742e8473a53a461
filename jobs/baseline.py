"""Baselines at an annotation budget: the mean shape of the annotated rows, or a supervised network from scratch.

    python jobs/baseline.py --config jobs/configs/baseline_synthetic_cpu.yaml data.path=data/synthetic-faces
    python jobs/baseline.py --config jobs/configs/baseline_synthetic_cpu.yaml method=mean_shape annotations=10
"""

import sys

from landmarks.cli import main

if __name__ == "__main__":
    sys.exit(main("baseline", __doc__))
