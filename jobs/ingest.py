"""Convert a raw dataset into Parquet shards + dataset.json (local directory or s3:// URI).

    python jobs/ingest.py mafl --root /data/celeba --out s3://bucket/mafl
    python jobs/ingest.py synthetic-faces --num-images 2000 --seed 0 --out data/faces
    python jobs/ingest.py --verify --out data/faces
"""

import sys

from landmarks.cli import main

if __name__ == "__main__":
    sys.exit(main("ingest", __doc__))
