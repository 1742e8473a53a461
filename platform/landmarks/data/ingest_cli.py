"""`jobs/ingest.py`'s command line: a dataset as distributed -> Parquet shards + dataset.json (`ingest`)."""


from __future__ import annotations

import argparse
import sys

from .converters import DATASETS

DESCRIPTION = """Convert a raw dataset into Parquet shards + dataset.json (local directory or s3:// URI).

    python jobs/ingest.py mafl --root /data/celeba --out s3://bucket/mafl
    python jobs/ingest.py synthetic-faces --num-images 2000 --seed 0 --out data/faces
    python jobs/ingest.py --verify --out data/faces

An interrupted ingest resumes when the same command is run again. Exit codes: 0 done,
1 bad input (one line naming the file and line), 2 bad usage.
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=DESCRIPTION.split("\n\n")[0])
    p.add_argument("dataset", nargs="?", metavar="DATASET",
                   help=f"one of {', '.join(DATASETS)}, or package.module:Class for your own converter")
    p.add_argument("--root", help="raw dataset directory (as distributed)")
    p.add_argument("--out", required=True, help="output directory or s3://bucket/prefix")
    p.add_argument("--image-size", type=int, default=96, help="network input size (default 96)")
    p.add_argument("--rows-per-shard", type=int, default=1000)
    p.add_argument("--image-format", choices=("png", "jpeg"), default=None,
                   help="encoding of the stored images: png (lossless, the official pixels; the default for real "
                        "datasets) or jpeg (quality 95: 3-4x smaller, faster to decode; synthetic-faces' default)")
    p.add_argument("--num-images", type=int, help="synthetic-faces: number of images")
    p.add_argument("--seed", type=int, help="synthetic-faces: seed")
    p.add_argument("--skip-bad", action="store_true", help="skip (and report) bad annotations/images")
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    p.add_argument("--verify", action="store_true", help="only check --out against its dataset.json")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--verbose", action="store_true", help="Ray logs, and tracebacks on errors")
    args = p.parse_args(argv)
    if args.verify:
        return args
    if args.dataset is None:
        p.error("DATASET is required (or --verify)")
    if args.dataset not in DATASETS and ":" not in args.dataset:
        p.error(f"unknown DATASET {args.dataset!r}; valid: {', '.join(DATASETS)}")
    synthetic = args.dataset == "synthetic-faces"
    if synthetic and args.root:
        p.error("synthetic-faces takes --num-images N --seed S, not --root")
    if not synthetic and (args.num_images is not None or args.seed is not None):
        p.error("--num-images / --seed are only for synthetic-faces")
    if not synthetic and ":" not in args.dataset and not args.root:
        p.error(f"{args.dataset} needs --root RAW_DIR")
    if args.image_size < 1 or args.rows_per_shard < 1:
        p.error("--image-size and --rows-per-shard must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from ..errors import UserError
    from ..storage import redact
    from .converters import BadItem
    from .ingest import ingest, verify_dataset

    try:
        if args.verify:
            manifest = verify_dataset(args.out)
            print(f"{redact(args.out)}: OK")
        else:
            options = {k: v for k, v in (("num_images", args.num_images), ("seed", args.seed)) if v is not None}
            manifest = ingest(args.dataset, args.root, args.out, image_size=args.image_size,
                              rows_per_shard=args.rows_per_shard, skip_bad=args.skip_bad, options=options,
                              progress=not args.no_progress, overwrite=args.overwrite, verbose=args.verbose,
                              image_format=args.image_format)
            print(f"{manifest.name} -> {redact(args.out)}")
    except (UserError, BadItem) as err:
        if args.verbose:
            raise
        print(f"error: {redact(str(err))}", file=sys.stderr)
        return getattr(err, "exit_code", 1)
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    for name, split in manifest.splits.items():
        print(f"  {name}: {split.rows} rows in {len(split.shards)} shard(s)")
    skipped = manifest.extra.get("skipped", 0)
    if skipped:
        print(f"  skipped: {skipped} bad item(s)")
    return 0
