"""Stage finetune_explicit: the explicit-attention baseline (Chen et al. 2016) on the same experts,
trained on all scales together with HMS's fine-tuning budget.

With ``runtime.gpus: N > 1`` the script re-executes itself under torchrun in N
processes (DistributedDataParallel); rank 0 logs and writes the outputs.
"""
import argparse
import sys
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dvclive import Live

from hms_core.cli import run_stage, stage_parser
from hms_core.distributed import process_group, relaunch_under_torchrun
from hms_core.engine import resolve_device
from hms_core.explicit import ExplicitAttention
from hms_core.training import finetune_explicit
from hms_core.transplant import transplant_experts


def main(args: argparse.Namespace, params: dict) -> None:
    device = resolve_device(params["runtime"]["device"])
    relaunch_under_torchrun(params["runtime"], device)  # returns only when no relaunch is needed
    model, meta, report = transplant_experts(params, args.experts, ExplicitAttention)
    model.meta = meta
    checkpoint = Path(args.checkpoint)
    with process_group(device) as ctx:
        if ctx.is_main:
            print("\n".join(report))
        logger = Live(args.live, resume=checkpoint.is_file(), save_dvc_exp=False, dvcyaml=False) \
            if ctx.is_main else nullcontext()
        with logger as live:
            summary = finetune_explicit(params, model, args.prepared, args.out, checkpoint, live)
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
