"""Stage evaluate: every single-scale model, avg/max pooling, HMS and the explicit-attention
baseline on the val split, at full label resolution."""
import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd
import torch

from hms_core.cli import run_stage, stage_parser
from hms_core.data import EvalSet, read_index
from hms_core.engine import resolve_device, seed_everything
from hms_core.evaluation import evaluate, markdown_table, results, row_names, table_rows
from hms_core.explicit import ExplicitAttention
from hms_core.hms import HMS
from hms_core.io import load_checkpoint, write_json, write_text
from hms_core.labels import build_grouping
from hms_core.official import OfficialCheck

TABLE_COLUMNS = ["trunk", "head", "method", "epochs", "finetune_epochs", "mIoU", "accuracy", "mean_class_acc"]


def load_model(path: str, cls: type[HMS]) -> HMS:
    ckpt = load_checkpoint(path)
    model = cls(ckpt["meta"])
    model.load_state_dict(ckpt["state_dict"], strict=True)
    return model


def main(args: argparse.Namespace, params: dict) -> None:
    seed_everything(params["seed"], params["runtime"]["deterministic"])
    cfg = params["evaluate"]
    model = load_model(args.model, HMS)
    explicit = load_model(args.explicit, ExplicitAttention) if args.explicit else None
    grouping = build_grouping(model.meta["grouping"])
    index = read_index(args.prepared, "val")
    loader = torch.utils.data.DataLoader(EvalSet(index), batch_size=cfg["batch_size"],
                                         num_workers=params["runtime"]["workers"])
    with tempfile.TemporaryDirectory() as tmp:
        check = None
        if cfg["official_check"]:
            last_hms = row_names(params["scales"], cfg["hms_scales"])[-1]
            check = OfficialCheck(last_hms, [e["image"] for e in index], grouping, tmp)
        cms = evaluate(model, loader, params["scales"], cfg["hms_scales"], grouping.num_classes,
                       resolve_device(params["runtime"]["device"]), cfg["flip"], explicit,
                       check.collect if check else None)
        res = results(cms, grouping.class_names)
        official = check.finish(res[check.row]) if check else None
    rows = table_rows(res, model.meta)
    out = Path(args.out)
    iou_columns = [f"IoU {c}" for c in grouping.class_names]
    table = markdown_table(rows, TABLE_COLUMNS) + "\nIoU per class (%)\n\n" + \
        markdown_table(rows, ["method"] + iou_columns)
    write_json(out / "eval.json", res)
    write_text(out / "table.md", table)
    write_text(out / "table.csv", pd.DataFrame(rows).to_csv(index=False))
    if official is not None:
        write_json(out / "official.json", official)
        print(f"evaluate: official Cityscapes evaluator on {official['row']}: mIoU {official['official']['mIoU']:.6f}, "
              f"largest difference to ours {official['max_abs_diff']:.1e}")
    print(table)


if __name__ == "__main__":
    parser = stage_parser(__doc__)
    parser.add_argument("--model", default="models/hms/model.pt")
    parser.add_argument("--explicit", default=None, help="explicit-attention baseline model (optional)")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--out", default="metrics")
    run_stage("evaluate", main, parser)
