"""bench/reference.py: the fair torchvision reference (model, recipe, budget, TTA rows) on a tiny
generated dataset."""
import json
import math

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, tiny_params
from torchvision.models import mobilenet_v3_large

from bench.reference import (
    TORCHVISION,
    aspp_rates,
    budget,
    build_model,
    build_optimizer,
    recipe_config,
    score,
    tta_probabilities,
)
from bench.reference import main as reference_main
from hms_core.data.dataset import prepare_dataset, read_index
from hms_core.data.labels import build_grouping
from hms_core.data.synthetic import generate_dataset
from hms_core.runtime.speed import Speed
from hms_core.train.jobs import pipeline_images

CHAIN_ROWS = ["reference", "reference_tta_0.5-1.0-2.0", "reference_tta_flip_0.5-1.0-2.0"]
CLASSES = list(build_grouping("category").class_names)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    ws = tmp_path_factory.mktemp("reference")
    generate_dataset(ws / "raw", {"train": 4, "val": 2}, 64, 128, seed=0, progress=False)
    prepare_dataset(ws / "raw", ws / "prepared", build_grouping("category"), ["train", "val"])
    (ws / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    return ws


def test_budget_is_the_whole_pipelines_images():
    for params in (tiny_params(), yaml.safe_load((ROOT / "params.yaml").read_text())):
        images, b = pipeline_images(params), params["train"]["batch_size"]
        assert budget(params) == (math.ceil(images / b), images)
    # The repository's defaults: 3 experts x 600 steps x 8 + 150 fine-tuning steps x 8 x 2 pairs.
    assert budget(yaml.safe_load((ROOT / "params.yaml").read_text())) == (2100, 16800)
    # Tiny: 3 x 3 x 2 + 2 x 2 x 2 = 26 images, 13 steps of 2.
    assert budget(tiny_params()) == (13, 26)
    assert budget(tiny_params(), steps=5) == (5, 10)


def test_deeplabv3_aspp_has_the_output_stride_16_rates():
    model = build_model("deeplabv3_mobilenet_v3_large", 7, aux=True)
    assert aspp_rates(model) == (6, 12, 18)
    assert model.classifier[0].convs[0][0].in_channels == 960
    with torch.no_grad():  # the trunk's C5 is at output stride 16 (the rates' stride)
        assert model.eval().backbone(torch.zeros(1, 3, 64, 96))["out"].shape[-2:] == (4, 6)
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large
    assert aspp_rates(deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=7)) == (12, 24, 36)


def test_recipes():
    params = tiny_params()
    tv = recipe_config("torchvision", "deeplabv3_mobilenet_v3_large", params)
    assert (tv["optimizer"], tv["lr"], tv["momentum"], tv["weight_decay"], tv["poly_power"], tv["scale_jitter"],
            tv["aux_weight"], tv["aux_lr_mult"]) == ("sgd", 0.01, 0.9, 1e-6, 0.9, [0.5, 2.0], 0.5, 10.0)
    assert (tv["crop"], tv["batch_size"], tv["class_balance"]) == (32, 2, params["train"]["class_balance"])
    lr = recipe_config("torchvision", "lraspp_mobilenet_v3_large", params, class_balance=0.0, lr=0.02,
                       weight_decay=1e-4)
    assert (lr["aux_weight"], lr["class_balance"], lr["lr"], lr["weight_decay"]) == (0.0, 0.0, 0.02, 1e-4)
    pipe = recipe_config("pipeline", "deeplabv3_mobilenet_v3_large", params)
    train = params["train"]
    assert (pipe["optimizer"], pipe["lr"], pipe["poly_power"], pipe["scale_jitter"], pipe["aux_weight"]) == \
        (train["optimizer"], train["lr"], train["poly_power"], train["scale_jitter"], 0.0)


def test_poly_lr_at_the_last_step():
    n = 7
    model = build_model("deeplabv3_mobilenet_v3_large", 7, aux=True)
    cfg = recipe_config("torchvision", "deeplabv3_mobilenet_v3_large", tiny_params())
    optimizer, scheduler = build_optimizer(model, cfg, n)
    assert len(optimizer.param_groups) == 2  # trunk + head, auxiliary head at 10x
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    for _ in range(n - 1):  # the lr of step t is the one after t scheduler steps
        optimizer.step()
        scheduler.step()
    factor = (1 - (n - 1) / n) ** 0.9
    assert optimizer.param_groups[0]["lr"] == pytest.approx(TORCHVISION["lr"] * factor, rel=1e-12)
    assert optimizer.param_groups[1]["lr"] == pytest.approx(10 * TORCHVISION["lr"] * factor, rel=1e-12)


def test_tta_at_scale_one_is_the_plain_prediction(workspace):
    model = build_model("lraspp_mobilenet_v3_large", len(CLASSES), aux=False).eval()
    image = torch.randn(1, 3, 40, 72)
    with torch.no_grad():
        plain = model(image)["out"]
        probs = tta_probabilities(lambda x: model(x)["out"], image, [1.0], flip=False)
    assert torch.allclose(probs, plain.softmax(1), atol=1e-6)
    assert torch.equal(probs.argmax(1), plain.argmax(1))
    cms = score(model, read_index(workspace / "prepared", "val"), len(CLASSES), [1.0], Speed(torch.device("cpu")))
    assert list(cms) == ["reference", "reference_tta_1.0", "reference_tta_flip_1.0"]
    assert (cms["reference"] == cms["reference_tta_1.0"]).all()
    assert cms["reference"].sum() > 0


def test_pretrained_backbone_is_loaded(tmp_path):
    net = mobilenet_v3_large(weights=None)
    torch.save(net.state_dict(), tmp_path / "mnv3.pt")
    model = build_model("lraspp_mobilenet_v3_large", 7, aux=False, pretrained_backbone=str(tmp_path / "mnv3.pt"))
    for key, value in net.features.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value)


@pytest.mark.parametrize("name", ["deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"])
def test_main_trains_and_writes_the_three_rows(workspace, name):
    out = workspace / name
    args = ["--params", str(workspace / "params.yaml"), "--prepared", str(workspace / "prepared"),
            "--out", str(out), "--model", name, "--steps", "3", "--device", "cpu"]
    reference_main(args)
    scores = json.loads((out / "eval.json").read_text())
    assert list(scores) == CHAIN_ROWS
    for row in scores.values():
        assert set(row) == {"mIoU", "pixel_acc", "mean_class_acc", "iou"}
        assert list(row["iou"]) == CLASSES
        # mIoU is the mean over the classes that occur or are predicted (NaN IoU left out)
        assert row["mIoU"] == pytest.approx(np.nanmean(np.array(list(row["iou"].values()), dtype=float)))
    summary = json.loads((out / "reference.json").read_text())
    assert (summary["steps"], summary["images"], summary["batch"], summary["crop"]) == (3, 6, 2, 32)
    assert summary["recipe"] == "torchvision" and summary["model"].startswith(name)
    # the parameters of the model as evaluated: without the auxiliary head that only training uses
    evaluated = build_model(name, len(CLASSES), aux=False)
    assert summary["params_M"] == round(sum(p.numel() for p in evaluated.parameters()) / 1e6, 2)
    if name == "lraspp_mobilenet_v3_large":  # seeded: the same run gives the same scores
        reference_main(args[:5] + [str(workspace / "again")] + args[6:])
        assert json.loads((workspace / "again" / "eval.json").read_text()) == scores
