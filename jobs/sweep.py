"""A Ray Tune grid over any job's config keys, one nested MLflow run per trial, mean +- std over repeats.

    python jobs/sweep.py --config jobs/configs/sweep_synthetic_cpu.yaml data.path=data/synthetic-faces
    python jobs/sweep.py --config jobs/configs/sweep_aflw_m_budget.yaml grid.repeat=[0,1,2,3,4]

Rerun the same command after an interruption to resume: finished trials are not run again.
"""

import sys

from landmarks.cli import main

if __name__ == "__main__":
    sys.exit(main("sweep", __doc__))
