"""The README's picture: a validation frame, the shipped model's labels (mask view, legend), ground truth.

    python benchmarks/demo_image.py --data ../shared/carla --frame 011786 --out assets/demo.jpg
"""
from __future__ import annotations

import argparse

import cv2
import numpy as np

from pipeline import segment
from pipeline.settings import load_settings
from train.checkpoint import load_model
from train.data import find_pairs, read_pair


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/carla")
    p.add_argument("--frame", required=True, help="frame name (stem), one of the checkpoint's validation frames")
    p.add_argument("--out", default="assets/demo.jpg")
    p.add_argument("--scale", type=float, default=2 / 3)
    args = p.parse_args()
    _, ckpt = load_model(None)
    if args.frame not in ckpt.get("split", {}).get("val", []):
        raise SystemExit(f"{args.frame} is not a validation frame of the shipped model: pick one it never trained on")
    pair = next(q for q in find_pairs(args.data) if q.stem == args.frame)
    image, truth = read_pair(pair)
    settings = load_settings().override(colourise={"view": "mask", "legend": True})
    labelled = next(iter(segment(image, settings=settings))).output
    palette = np.asarray(ckpt["palette"], np.uint8)
    panels = [cv2.resize(x, None, fx=args.scale, fy=args.scale, interpolation=cv2.INTER_AREA if x is image else
                         cv2.INTER_NEAREST_EXACT) for x in (image, labelled, palette[truth])]
    cv2.imwrite(args.out, cv2.cvtColor(np.hstack(panels), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
