"""End-to-end fine-tuning of backbone + landmark regressor on Ray Train (Table 1, "fine-tuned").

    python jobs/finetune.py --config jobs/configs/finetune_synthetic_cpu.yaml data.path=data/synthetic-faces
    python jobs/finetune.py --config jobs/configs/finetune_mafl.yaml backbone.source=<pretrain run id>
"""

import sys

from landmarks.cli import main

if __name__ == "__main__":
    sys.exit(main("finetune", __doc__))
