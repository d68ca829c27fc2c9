"""Stage train (one per scale): a trunk + DeepLab head trained at one image scale.

Stage train_control (``--control``): the equal-budget control, one scale-1.0 network trained
with the same recipe on as many images as the whole HMS pipeline (experts + fine-tuning).

With ``runtime.gpus: N > 1`` the script re-executes itself under torchrun in N
processes (DistributedDataParallel); rank 0 logs and writes the outputs.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hms_core.tools.stage import run_stage, stage_parser, training_session
from hms_core.train.jobs import control_steps, train_expert


def main(args: argparse.Namespace, params: dict) -> None:
    if args.control and args.init:
        raise ValueError("--init: the equal-budget control trains from scratch (or from pretrained)")
    if args.control and float(args.scale) != 1.0:
        raise ValueError(f"--scale {args.scale}: the equal-budget control trains at scale 1.0")
    if not args.control and float(args.scale) not in [float(s) for s in params["scales"]]:
        raise ValueError(f"--scale {args.scale} is not in params scales {params['scales']}")
    steps = control_steps(params) if args.control else None
    with training_session(params["runtime"], args.live) as (ctx, live):
        summary = train_expert(params, float(args.scale), args.prepared, Path(args.out) / "model.pt",
                               args.checkpoint, live, steps, init=args.init)
        if live is not None:
            live.summary.update({"epochs": summary["epochs"]})
    if ctx.is_main:
        print(f"train: scale {args.scale}: {summary['steps']} steps ({summary['epochs']:.1f} epochs), "
              f"final loss {summary['final_loss']:.4f} -> {args.out}/model.pt")


if __name__ == "__main__":
    parser = stage_parser(__doc__)
    parser.add_argument("--scale", required=True, type=float)
    parser.add_argument("--control", action="store_true",
                        help="train the equal-budget control (as many images as experts + fine-tuning)")
    parser.add_argument("--init", help="start from this trained expert's model.pt (a warm start; not used by "
                        "dvc.yaml: bench/run_seed.py --warm-start measures it)")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--out", required=True, help="folder for model.pt")
    parser.add_argument("--checkpoint", required=True, help="resumable checkpoint (persisted)")
    parser.add_argument("--live", required=True, help="dvclive folder")
    run_stage("train", main, parser)
