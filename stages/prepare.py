"""Stage prepare: group the label ids of any Cityscapes-layout root (``data.root``)."""
import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hms_core.cli import run_stage, stage_parser
from hms_core.data import prepare_split
from hms_core.io import write_json
from hms_core.labelmap import load_label_map
from hms_core.labels import build_grouping

SPLITS = ("train", "val")


def main(args: argparse.Namespace, params: dict) -> None:
    grouping = build_grouping(params["data"]["grouping"])
    label_map = params["data"]["label_map"]
    lut = None if label_map == "none" else load_label_map(label_map)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    stats = {split: prepare_split(params["data"]["root"], split, out, grouping, lut) for split in SPLITS}
    write_json(out / "meta.json", {"root": params["data"]["root"], "grouping": grouping.mode,
                                   "classes": list(grouping.class_names), "splits": stats})
    for split, s in stats.items():
        print(f"prepare: {split}: {s['images']} images, {grouping.num_classes} classes ({grouping.mode})")


if __name__ == "__main__":
    parser = stage_parser(__doc__)
    parser.add_argument("--out", default="data/prepared")
    run_stage("prepare", main, parser)
