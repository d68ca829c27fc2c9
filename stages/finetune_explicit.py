"""Stage finetune_explicit: the explicit-attention baseline (Chen et al. 2016) on the same experts,
trained on all scales together with HMS's fine-tuning budget.

With ``runtime.gpus: N > 1`` the script re-executes itself under torchrun in N
processes (DistributedDataParallel); rank 0 logs and writes the outputs.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hms_core.models.explicit import ExplicitAttention
from hms_core.models.transplant import transplant_experts
from hms_core.tools.stage import run_stage, stage_parser, training_session
from hms_core.train.jobs import finetune_explicit


def main(args: argparse.Namespace, params: dict) -> None:
    with training_session(params["runtime"], args.live) as (ctx, live):
        model, report = transplant_experts(params, args.experts, ExplicitAttention)
        if ctx.is_main:
            print("\n".join(report))
        summary = finetune_explicit(params, model, args.prepared, args.out, args.checkpoint, live)
    if ctx.is_main:
        print(f"finetune_explicit: scales {model.scales}: {summary['steps']} steps, "
              f"final loss {summary['final_loss']:.4f} -> {args.out}")


if __name__ == "__main__":
    parser = stage_parser(__doc__)
    parser.add_argument("--experts", default="models/experts")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--out", default="models/explicit/model.pt")
    parser.add_argument("--checkpoint", default="checkpoints/finetune_explicit.pt")
    parser.add_argument("--live", default="metrics/finetune_explicit")
    run_stage("finetune_explicit", main, parser)
