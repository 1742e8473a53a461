"""Save a PNG grid of synthetic faces with their landmarks, and time the generator.

    python benchmarks/synthetic_preview.py OUT.png [--seed 0] [--difficulty normal] [--image-size 96]
        [--num 16] [--mask] [--zoom 2] [--time 200]

Landmarks: left eye red, right eye green, nose blue, left mouth yellow, right mouth magenta; the
dashed square is the eval-time border crop. `--mask` tints the foreground mask; `--time N` renders
N more images in this process (one core) and prints images per second.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image, ImageDraw

from landmarks.data.converters.synthetic import SyntheticFaces

COLORS = [(255, 40, 40), (40, 255, 40), (60, 120, 255), (255, 230, 0), (255, 0, 255)]


def tile(record, border: int, zoom: int, show_mask: bool) -> Image.Image:
    img = record.image.astype(np.float32)
    if show_mask:
        img = np.where(record.mask[..., None] > 0, 0.6 * img + 0.4 * np.array([0, 255, 255]), img)
    size = img.shape[0]
    im = Image.fromarray(img.astype(np.uint8)).resize((size * zoom, size * zoom), Image.NEAREST)
    draw = ImageDraw.Draw(im)
    lo, hi = border * zoom, (size - border) * zoom - 1
    for a in range(lo, hi, 8):
        for dash in ((a, lo, a + 4, lo), (a, hi, a + 4, hi), (lo, a, lo, a + 4), (hi, a, hi, a + 4)):
            draw.line(dash, fill=(255, 255, 255))
    for (x, y), color in zip(record.keypoints.tolist(), COLORS):
        cx, cy = (x + 0.5) * zoom, (y + 0.5) * zoom
        draw.line((cx - 3, cy, cx + 3, cy), fill=color)
        draw.line((cx, cy - 3, cx, cy + 3), fill=color)
    return im


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--difficulty", default="normal")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--num", type=int, default=16)
    p.add_argument("--mask", action="store_true")
    p.add_argument("--zoom", type=int, default=2)
    p.add_argument("--time", type=int, default=0, metavar="N")
    args = p.parse_args()

    total = max(args.num + args.time, 3)
    conv = SyntheticFaces(image_size=args.image_size,
                          options={"num_images": total, "seed": args.seed, "difficulty": args.difficulty})
    items = sorted((it for split in conv.splits().values() for it in split), key=lambda it: it.index)
    tiles = [tile(conv.load(it), conv.info.border, args.zoom, args.mask) for it in items[:args.num]]
    cols = int(np.ceil(np.sqrt(len(tiles))))
    rows = -(-len(tiles) // cols)
    w = tiles[0].width
    grid = Image.new("RGB", (cols * (w + 4), rows * (w + 4)), (255, 255, 255))
    for i, t in enumerate(tiles):
        grid.paste(t, ((i % cols) * (w + 4), (i // cols) * (w + 4)))
    grid.save(args.out)
    print(f"wrote {args.out}: {len(tiles)} images of {conv.info.stored_size} px")
    if args.time:
        wall, cpu = time.perf_counter(), time.process_time()
        for it in items[args.num:args.num + args.time]:
            conv.load(it)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"{args.time} images in {wall:.2f} s wall, {cpu:.2f} s CPU: {args.time / wall:.0f} images/s "
              f"(wall), {args.time / cpu:.0f} images/s per core (CPU time; differs when the machine is busy)")


if __name__ == "__main__":
    main()
