"""Stage evaluate: every single-scale model, avg/max pooling, HMS and the explicit-attention
baseline on the val split at full label resolution; tables, costs, pictures."""
import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd
import torch

from hms_core.cli import run_stage, stage_parser
from hms_core.costs import inference_costs
from hms_core.data import EvalSet, read_index
from hms_core.engine import resolve_device, seed_everything
from hms_core.evaluation import evaluate, markdown_table, results, row_names, row_specs, table_rows
from hms_core.explicit import ExplicitAttention
from hms_core.hms import load_hms
from hms_core.io import write_json, write_text
from hms_core.labels import build_grouping
from hms_core.official import OfficialCheck
from hms_core.pictures import confusion_figure, prediction_panel

TABLE_COLUMNS = ["trunk", "head", "method", "epochs", "finetune_epochs", "mIoU", "accuracy", "mean_class_acc"]
COST_COLUMNS = ["params (M)", "ms/image", "peak MB"]


def main(args: argparse.Namespace, params: dict) -> None:
    seed_everything(params["seed"], params["runtime"]["deterministic"])
    cfg, scales, chains = params["evaluate"], params["scales"], params["evaluate"]["hms_scales"]
    device = resolve_device(params["runtime"]["device"])
    model = load_hms(args.model).eval()
    explicit = load_hms(args.explicit, ExplicitAttention).eval() if args.explicit else None
    grouping = build_grouping(model.meta["grouping"])
    dataset = EvalSet(read_index(args.prepared, "val"))
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg["batch_size"],
                                         num_workers=params["runtime"]["workers"])
    with tempfile.TemporaryDirectory() as tmp:
        check = None
        if cfg["official_check"]:
            check = OfficialCheck(row_names(scales, chains)[-1], [e["image"] for e in dataset.index], grouping, tmp)
        cms = evaluate(model, loader, scales, chains, grouping.num_classes, device, cfg["flip"], explicit,
                       check.collect if check else None)
        res = results(cms, grouping.class_names)
        official = check.finish(res[check.row]) if check else None
    costs = inference_costs(model, dataset[0][0][None], row_specs(scales, chains, explicit), device,
                            explicit) if cfg["costs"] else None

    out = Path(args.out)
    rows = table_rows(res, model.meta, costs)
    iou_columns = [f"IoU {c}" for c in grouping.class_names]
    table = markdown_table(rows, TABLE_COLUMNS + (COST_COLUMNS if costs else [])) + \
        "\nIoU per class (%), the best row of each class in bold\n\n" + \
        markdown_table(rows, ["method"] + iou_columns, mark_best=iou_columns)
    write_json(out / "eval.json", res)
    write_text(out / "table.md", table)
    write_text(out / "table.csv", pd.DataFrame(rows).to_csv(index=False))
    write_json(out / "costs.json", costs or {})  # declared outputs: written even when disabled
    write_json(out / "official.json", official or {"enabled": False})
    if official is not None:
        print(f"evaluate: official Cityscapes evaluator on {official['row']}: mIoU {official['official']['mIoU']:.6f}, "
              f"largest difference to ours {official['max_abs_diff']:.1e}")
    pictures = out / "pictures"
    shutil.rmtree(pictures, ignore_errors=True)
    for i in range(min(cfg["pictures"], len(dataset))):
        image, label = dataset[i]
        prediction_panel(model, image, label, grouping, scales, chains, pictures / f"val_{i}.png", explicit,
                         title=Path(dataset.index[i]["image"]).name)
    for name, cm in cms.items():
        confusion_figure(cm, grouping.class_names, f"{name}: confusion (rows sum to 1)",
                         pictures / f"confusion_{name}.png")
    print(table)


if __name__ == "__main__":
    parser = stage_parser(__doc__)
    parser.add_argument("--model", default="models/hms/model.pt")
    parser.add_argument("--explicit", default=None, help="explicit-attention baseline model (optional)")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--out", default="metrics")
    run_stage("evaluate", main, parser)
