"""Stage evaluate: every single-scale model, avg/max pooling and HMS on the val split."""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd
import torch

from hms_core.cli import run_stage, stage_parser
from hms_core.data import EvalSet, read_index
from hms_core.engine import resolve_device, seed_everything
from hms_core.evaluation import evaluate, markdown_table, results, table_rows
from hms_core.hms import HMS
from hms_core.io import load_checkpoint, write_json, write_text
from hms_core.labels import build_grouping

TABLE_COLUMNS = ["trunk", "head", "method", "epochs", "finetune_epochs", "mIoU", "accuracy", "mean_class_acc"]


def main(args: argparse.Namespace, params: dict) -> None:
    seed_everything(params["seed"], params["runtime"]["deterministic"])
    ckpt = load_checkpoint(args.model)
    model = HMS(ckpt["meta"])
    model.load_state_dict(ckpt["state_dict"], strict=True)
    grouping = build_grouping(ckpt["meta"]["grouping"])
    loader = torch.utils.data.DataLoader(EvalSet(read_index(args.prepared, "val")),
                                         batch_size=params["evaluate"]["batch_size"],
                                         num_workers=params["runtime"]["workers"])
    cms = evaluate(model, loader, params["scales"], params["evaluate"]["hms_scales"], grouping.num_classes,
                   resolve_device(params["runtime"]["device"]), params["evaluate"]["flip"])
    res = results(cms, grouping.class_names)
    rows = table_rows(res, ckpt["meta"])
    out = Path(args.out)
    iou_columns = [f"IoU {c}" for c in grouping.class_names]
    table = markdown_table(rows, TABLE_COLUMNS) + "\nIoU per class (%)\n\n" + \
        markdown_table(rows, ["method"] + iou_columns)
    write_json(out / "eval.json", res)
    write_text(out / "table.md", table)
    write_text(out / "table.csv", pd.DataFrame(rows).to_csv(index=False))
    print(table)


if __name__ == "__main__":
    parser = stage_parser(__doc__)
    parser.add_argument("--model", default="models/hms/model.pt")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--out", default="metrics")
    run_stage("evaluate", main, parser)
