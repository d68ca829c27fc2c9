"""Stage generate: the embedded synthetic street-scene dataset in the Cityscapes layout."""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hms_core.data.synthetic import generate_dataset
from hms_core.io import atomic_dir
from hms_core.tools.stage import run_stage, stage_parser


def main(args: argparse.Namespace, params: dict) -> None:
    cfg = params["data"]["synthetic"]
    with atomic_dir(args.out) as tmp:  # the dataset appears whole or not at all
        summary = generate_dataset(tmp, {"train": cfg["train"], "val": cfg["val"]}, cfg["height"], cfg["width"],
                                   params["seed"])
    for split, s in summary.items():
        print(f"generate: {split}: {s['images']} images of {cfg['height']}x{cfg['width']} in {args.out}")


if __name__ == "__main__":
    parser = stage_parser(__doc__)
    parser.add_argument("--out", default="data/raw/synthetic")
    run_stage("generate", main, parser)
