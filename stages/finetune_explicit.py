"""Stage finetune_explicit: the explicit-attention baseline (Chen et al. 2016) on the same experts,
trained on all scales together with HMS's fine-tuning budget."""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dvclive import Live

from hms_core.cli import run_stage, stage_parser
from hms_core.explicit import ExplicitAttention, finetune_explicit
from hms_core.transplant import transplant_experts


def main(args: argparse.Namespace, params: dict) -> None:
    model, meta, report = transplant_experts(params, args.experts, ExplicitAttention)
    model.meta = meta
    print("\n".join(report))
    checkpoint = Path(args.checkpoint)
    with Live(args.live, resume=checkpoint.is_file(), save_dvc_exp=False, dvcyaml=False) as live:
        summary = finetune_explicit(params, model, args.prepared, args.out, checkpoint, live)
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
