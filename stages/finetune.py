"""Stage finetune: train the HMS attention heads on adjacent scale pairs.

With ``runtime.gpus: N > 1`` the script re-executes itself under torchrun in N
processes (DistributedDataParallel); rank 0 logs and writes the outputs.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hms_core.models.hms import load_hms
from hms_core.tools.stage import run_stage, stage_parser, training_session
from hms_core.train.jobs import finetune_hms, finetune_pairs


def main(args: argparse.Namespace, params: dict) -> None:
    with training_session(params["runtime"], args.live) as (ctx, live):
        model = load_hms(args.model)
        summary = finetune_hms(params, model, args.prepared, args.out, args.checkpoint, live)
    if ctx.is_main:
        print(f"finetune: pairs {finetune_pairs(params)}: {summary['steps']} steps, "
              f"final loss {summary['final_loss']:.4f} -> {args.out}")


if __name__ == "__main__":
    parser = stage_parser(__doc__)
    parser.add_argument("--model", default="models/hms/transplanted.pt")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--out", default="models/hms/model.pt")
    parser.add_argument("--checkpoint", default="checkpoints/finetune.pt")
    parser.add_argument("--live", default="metrics/finetune")
    run_stage("finetune", main, parser)
