"""Figure-ground segmentation with a 1x1 conv head on a frozen or fine-tuned backbone (Table 6).

    python jobs/segment.py --config jobs/configs/segment_synthetic_cpu.yaml data.path=data/synthetic-faces
    python jobs/segment.py --config jobs/configs/segment_cub.yaml backbone.source=<pretrain run id> annotations=10
"""

import sys

from landmarks.cli import main

if __name__ == "__main__":
    sys.exit(main("segment", __doc__))
