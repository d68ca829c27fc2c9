"""Stage convert: a dataset in the "images/ + masks/ + classes.txt" layout (``data.convert.root``)
converted into the Cityscapes layout under ``data/raw/converted``, with its label map.

``data.convert.root: none`` (the default) writes an empty folder: the pipeline then
reads ``data.root`` as it is (the synthetic dataset, or Cityscapes).
"""
import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hms_core.cli import run_stage, stage_parser
from hms_core.convert import convert_dataset


def main(args: argparse.Namespace, params: dict) -> None:
    cfg = params["data"]["convert"]
    out, tmp = Path(args.out), Path(args.out + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        counts = {} if cfg["root"] == "none" else convert_dataset(cfg["root"], tmp, cfg["splits"], cfg["label_map"])
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)  # the dataset appears whole or not at all
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not counts:
        print(f"convert: data.convert.root is none: {out} left empty")
    for split, n in counts.items():
        print(f"convert: {split}: {n} images from {cfg['root']} -> {out}")


if __name__ == "__main__":
    parser = stage_parser(__doc__)
    parser.add_argument("--out", default="data/raw/converted")
    run_stage("convert", main, parser)
