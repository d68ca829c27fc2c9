"""Stage transplant: build the HMS model from the per-scale experts."""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hms_core.io import save_checkpoint
from hms_core.models.transplant import transplant_experts
from hms_core.tools.stage import run_stage, stage_parser


def main(args: argparse.Namespace, params: dict) -> None:
    model, report = transplant_experts(params, args.experts)
    save_checkpoint(args.out, {"meta": model.meta, "state_dict": model.state_dict()})
    print("\n".join(report + [f"  -> {args.out}"]))


if __name__ == "__main__":
    parser = stage_parser(__doc__)
    parser.add_argument("--experts", default="models/experts")
    parser.add_argument("--out", default="models/hms/transplanted.pt")
    run_stage("transplant", main, parser)
