"""Stage evaluate: every single-scale model, avg/max pooling, the scale-1.0 branch at several scales
(TTA), HMS, the explicit-attention baseline and the equal-budget control (one scale-1.0 network
trained on as many images as the whole HMS pipeline) on the val split at full label resolution; tables,
confusion matrices, per-class attention, costs, pictures, and the predictions the official_check
stage scores."""
import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd
import torch

from hms_core.data.dataset import EvalSet, read_index
from hms_core.data.labels import build_grouping
from hms_core.evaluate.costs import inference_costs
from hms_core.evaluate.official import PredictionWriter
from hms_core.evaluate.pictures import confusion_figure, prediction_panel
from hms_core.evaluate.rows import (
    attention_means,
    chain_name,
    confusion_report,
    control_specs,
    evaluate,
    headline_chain,
    markdown_table,
    results,
    row_names,
    row_specs,
    table_rows,
)
from hms_core.io import write_json, write_text
from hms_core.models.explicit import ExplicitAttention
from hms_core.models.hms import load_hms
from hms_core.models.transplant import single_network
from hms_core.runtime.speed import Speed, configure_backends
from hms_core.tools.stage import run_stage, stage_parser
from hms_core.train.engine import resolve_device, seed_everything

TABLE_COLUMNS = ["trunk", "head", "method", "expert epochs", "train images", "finetune images", "mIoU", "accuracy",
                 "mean_class_acc"]
COST_COLUMNS = ["params (M)", "ms/image", "peak MB"]


def main(args: argparse.Namespace, params: dict) -> None:
    runtime = params["runtime"]
    seed_everything(params["seed"], runtime["deterministic"])
    cfg, chains = params["evaluate"], params["evaluate"]["hms_scales"]
    device = resolve_device(runtime["device"])
    configure_backends(device, runtime["deterministic"])
    speed = Speed.from_runtime(runtime, device)
    model = load_hms(args.model)
    explicit = load_hms(args.explicit, ExplicitAttention) if args.explicit else None
    grouping = build_grouping(model.meta["grouping"])
    # The scales the model runs at: the experts', or in shared mode every scale of the chains
    # (single-scale and pooling rows then run the one model at each of them).
    scales = model.scales
    rows = row_specs(scales, chains, explicit.scales if explicit else None, cfg["flip"])
    dataset = EvalSet(read_index(args.prepared, "val"))
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg["batch_size"], num_workers=runtime["workers"],
                                         pin_memory=device.type == "cuda")
    # The checked row's predictions, for the official_check stage (only index.json when disabled).
    with PredictionWriter(args.predictions, row_names(scales, chains)[-1], [e["image"] for e in dataset.index],
                          grouping.mode, enabled=cfg["official_check"]) as writer:
        evaluation = evaluate(model, loader, rows, grouping.num_classes, speed, explicit,
                              writer.collect if writer.enabled else None, cfg["window"])
    res = results(evaluation.confusion, grouping.class_names)
    costs = inference_costs(model, dataset[0][0][None], rows, speed, explicit) if cfg["costs"] else None
    table_data = table_rows(res, rows, model.meta, explicit.meta if explicit else None, costs)
    if args.control:
        # The equal-budget control runs through the same rows as its own model: alone and with TTA.
        control = single_network(args.control, headline_chain(chains))
        control_rows = control_specs(chains, cfg["flip"])
        control_eval = evaluate(control, loader, control_rows, grouping.num_classes, speed, window=cfg["window"])
        control_res = results(control_eval.confusion, grouping.class_names)
        control_costs = (inference_costs(control, dataset[0][0][None], control_rows, speed)
                         if cfg["costs"] else None)
        table_data += table_rows(control_res, control_rows, control.meta, None, control_costs)
        res.update(control_res)
        evaluation.confusion.update(control_eval.confusion)
        costs = None if costs is None else {**costs, **control_costs}

    out = Path(args.out)
    iou_columns = [f"IoU {c}" for c in grouping.class_names]
    table = markdown_table(table_data, TABLE_COLUMNS + (COST_COLUMNS if costs else [])) + \
        "\nIoU per class (%), the best row of each class in bold\n\n" + \
        markdown_table(table_data, ["method"] + iou_columns, mark_best=iou_columns)
    write_json(out / "eval.json", res)
    write_json(out / "confusion.json", confusion_report(evaluation.confusion, grouping.class_names))
    write_json(out / "attention.json", {"chain": chain_name(max(chains, key=len)),
                                        **attention_means(evaluation, grouping.class_names)})
    write_text(out / "table.md", table)
    write_text(out / "table.csv", pd.DataFrame(table_data).to_csv(index=False))
    write_json(out / "costs.json", costs or {})  # declared outputs: written even when disabled
    pictures = out / "pictures"
    shutil.rmtree(pictures, ignore_errors=True)
    for i in range(min(cfg["pictures"], len(dataset))):
        image, label = dataset[i]
        prediction_panel(model, image, label, grouping, rows, pictures / f"val_{i}.png", explicit, speed,
                         title=Path(dataset.index[i]["image"]).name)
    for name, cm in evaluation.confusion.items():
        confusion_figure(cm, grouping.class_names, f"{name}: confusion (rows sum to 1)",
                         pictures / f"confusion_{name}.png")
    print(table)


if __name__ == "__main__":
    parser = stage_parser(__doc__)
    parser.add_argument("--model", default="models/hms/model.pt")
    parser.add_argument("--explicit", default=None, help="explicit-attention baseline model (optional)")
    parser.add_argument("--control", default=None, help="equal-budget control network (optional)")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--out", default="metrics")
    parser.add_argument("--predictions", default="data/predictions", help="the official check's predictions")
    run_stage("evaluate", main, parser)
