"""Stage convert: a dataset in the "images/ + masks/ + classes.txt" layout (``data.convert.root``)
converted into the Cityscapes layout under ``data/raw/converted``, with its label map.

``data.convert.root: none`` (the default) writes an empty folder: the pipeline then
reads ``data.root`` as it is (the synthetic dataset, or Cityscapes).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hms_core.data.convert import convert_dataset
from hms_core.io import atomic_dir
from hms_core.tools.stage import run_stage, stage_parser


def main(args: argparse.Namespace, params: dict) -> None:
    cfg = params["data"]["convert"]
    with atomic_dir(args.out) as tmp:  # the dataset appears whole or not at all
        counts = {} if cfg["root"] == "none" else convert_dataset(cfg["root"], tmp, cfg["splits"], cfg["label_map"])
    if not counts:
        print(f"convert: data.convert.root is none: {args.out} left empty")
    for split, n in counts.items():
        print(f"convert: {split}: {n} images from {cfg['root']} -> {args.out}")


if __name__ == "__main__":
    parser = stage_parser(__doc__)
    parser.add_argument("--out", default="data/raw/converted")
    run_stage("convert", main, parser)
