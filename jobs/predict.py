"""Landmarks (or masks) for every image of a dataset split or a folder of photos, with a trained model, on Ray Data.

    python jobs/predict.py --config jobs/configs/predict.yaml model.source=<regress run id> input.path=photos/ --overlays 8
    python jobs/predict.py --config jobs/configs/predict.yaml model.source=models:/mafl-regressor@best \
        input.path=data/mafl input.split=test output.path=predictions-mafl --skip-bad
"""

import sys

from landmarks.cli import main

if __name__ == "__main__":
    sys.exit(main("predict", __doc__))
