"""Figure-ground segmentation with a 1x1 conv head on a frozen or fine-tuned backbone (Table 6).

    python jobs/segment.py --config jobs/configs/segment_synthetic_cpu.yaml data.path=data/synthetic-faces
    python jobs/segment.py --config jobs/configs/segment_cub.yaml backbone.source=<pretrain run id> annotations=10
"""

import sys

from landmarks.cli import job_main
from landmarks.train.configs import SegmentConfig
from landmarks.train.segment import run_segment

if __name__ == "__main__":
    sys.exit(job_main(SegmentConfig, run_segment, __doc__))
