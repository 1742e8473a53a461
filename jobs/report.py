"""Tables (our numbers beside the paper's) and figures from the runs of MLflow experiments.

    python jobs/report.py --experiment regress --experiment table7-aflw-m-budget --out report/
    python jobs/report.py --experiment regress-synthetic --out report/ --pca-backbone RUN_ID --data data/faces
"""

import sys

from landmarks.cli import main

if __name__ == "__main__":
    sys.exit(main("report", __doc__))
