"""Stage transplant: build the HMS model from the per-scale experts."""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hms_core.cli import run_stage, stage_parser
from hms_core.io import load_checkpoint, save_checkpoint
from hms_core.training import model_meta
from hms_core.transplant import transplant


def main(args: argparse.Namespace, params: dict) -> None:
    experts = Path(args.experts)
    scales = sorted(float(s) for s in params["scales"])
    paths = {s: experts / f"scale_{s}" / "model.pt" for s in scales}
    for s, p in paths.items():
        if not p.is_file():
            raise FileNotFoundError(f"{p}: expert of scale {s} not found (run the train stage)")
    meta = {**model_meta(params), "mode": params["hms"]["mode"], "scales": scales}
    model, report = transplant(meta, paths, params["hms"]["shared_source_scale"], params["seed"])
    source = load_checkpoint(paths[float(params["hms"]["shared_source_scale"])])["meta"]
    meta = {**meta, "steps": source["steps"], "epochs": source["epochs"]}
    save_checkpoint(args.out, {"meta": meta, "state_dict": model.state_dict()})
    print("\n".join(report + [f"  -> {args.out}"]))


if __name__ == "__main__":
    parser = stage_parser(__doc__)
    parser.add_argument("--experts", default="models/experts")
    parser.add_argument("--out", default="models/hms/transplanted.pt")
    run_stage("transplant", main, parser)
