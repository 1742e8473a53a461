"""Landmark regression on a frozen representation (hypercolumn / conv4 / projected), full or limited annotations.

    python jobs/regress.py --config jobs/configs/regress_synthetic_cpu.yaml data.path=data/synthetic-faces
    python jobs/regress.py --config jobs/configs/regress_mafl.yaml data.path=... backbone.source=<pretrain run id>
"""

import sys

from landmarks.cli import main

if __name__ == "__main__":
    sys.exit(main("regress", __doc__))
