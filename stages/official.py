"""Stage official_check: score evaluate's predictions of the last HMS row with the official Cityscapes
evaluator (the ground truth mapped through data.label_map when set) and compare with our scores of
that row; the report is written first, then a disagreement above tolerance fails the stage."""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hms_core.data.labelmap import load_label_map
from hms_core.evaluate.official import check_agreement, official_check
from hms_core.io import write_json
from hms_core.tools.stage import run_stage, stage_parser


def main(args: argparse.Namespace, params: dict) -> None:
    if not params["evaluate"]["official_check"]:
        write_json(args.out, {"enabled": False})  # the declared output, even when disabled
        print("official_check: disabled (evaluate.official_check: false)")
        return
    label_map = params["data"]["label_map"]
    lut = None if label_map == "none" else load_label_map(label_map)
    report = official_check(args.predictions, args.eval, params["data"]["grouping"], lut)
    write_json(args.out, report)
    print(f"official_check: official Cityscapes evaluator on {report['row']}: mIoU {report['official']['mIoU']:.6f}, "
          f"largest difference to ours {report['max_abs_diff']:.1e} (tolerance {report['tolerance']:.0e})")
    check_agreement(report, args.out)


if __name__ == "__main__":
    parser = stage_parser(__doc__)
    parser.add_argument("--predictions", default="data/predictions")
    parser.add_argument("--eval", default="metrics/eval.json", help="our scores (the evaluate stage's eval.json)")
    parser.add_argument("--out", default="metrics/official.json")
    run_stage("official_check", main, parser)
