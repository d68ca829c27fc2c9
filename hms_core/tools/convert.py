"""Convert an "images/ + masks/ + class list" dataset into the Cityscapes layout.

``hms convert --images DIR --masks DIR --classes classes.txt --out ROOT --split train``

The conversion itself is :mod:`hms_core.data.convert`, whose docstring tells the layout;
this module is its command line, kept apart so that a change here reruns no pipeline stage.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hms_core.data.convert import DEFAULT_CITY, convert

DESCRIPTION = __doc__.split("\n\n")[0]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``hms convert``, on ``p``."""
    p.add_argument("--images", required=True, help="folder of images (PNG or JPEG)")
    p.add_argument("--masks", required=True, help="folder of class-index mask PNGs, same stems as the images")
    p.add_argument("--classes", required=True, help="class list, one name per line (line i = mask value i)")
    p.add_argument("--out", required=True, help="dataset root to write (Cityscapes layout)")
    p.add_argument("--split", required=True, help="split name, e.g. train or val")
    p.add_argument("--city", default=DEFAULT_CITY, help="sub-folder name inside the split (default: %(default)s)")
    p.add_argument("--label-map", default=None,
                   help="label-map skeleton to write if it does not exist (default: OUT/label_map.yaml)")


def run(args: argparse.Namespace, prog: str = "hms convert") -> int:
    """Convert as ``args`` say; returns 0 (``hms`` turns a raised error into its exit status)."""
    n, label_map, written = convert(args.images, args.masks, args.classes, args.out, args.split,
                                    args.city, args.label_map)
    print(f"{prog}: {n} images -> {Path(args.out) / 'leftImg8bit' / args.split / args.city}", file=sys.stderr)
    state = "written; complete its null entries" if written else "exists, kept unchanged"
    print(f"{prog}: label map {label_map} {state}", file=sys.stderr)
    return 0

