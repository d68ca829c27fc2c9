"""Stage prepare: group the label ids of any Cityscapes-layout root (``data.root``)."""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hms_core.data.dataset import prepare_dataset
from hms_core.data.labelmap import load_label_map
from hms_core.data.labels import build_grouping
from hms_core.tools.stage import run_stage, stage_parser

SPLITS = ("train", "val")


def main(args: argparse.Namespace, params: dict) -> None:
    grouping = build_grouping(params["data"]["grouping"])
    label_map = params["data"]["label_map"]
    lut = None if label_map == "none" else load_label_map(label_map)
    meta = prepare_dataset(params["data"]["root"], args.out, grouping, SPLITS, lut)
    for split, s in meta["splits"].items():
        print(f"prepare: {split}: {s['images']} images, {grouping.num_classes} classes ({grouping.mode})")


if __name__ == "__main__":
    parser = stage_parser(__doc__)
    parser.add_argument("--out", default="data/prepared")
    run_stage("prepare", main, parser)
