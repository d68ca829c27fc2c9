"""The fair reference: what a user would pick instead of this pipeline, a torchvision
segmentation model trained with its own recipe on as many training images as the whole HMS
pipeline, scored by our evaluator on the val split.

    python bench/reference.py [--params params.yaml] [--prepared data/prepared] [--out DIR]
                              [--model deeplabv3_mobilenet_v3_large | lraspp_mobilenet_v3_large]
                              [--recipe torchvision | pipeline] [--steps N] [--class-balance P]
                              [--pretrained-backbone FILE] [--lr LR] [--weight-decay WD] [--device DEV]

Models (``--model``), from scratch (``weights=None, weights_backbone=None``) unless
``--pretrained-backbone FILE`` gives a local state dict of torchvision's MobileNetV3-Large
classification model (its ``features.*`` load into the segmentation trunk; nothing is
downloaded):

* ``deeplabv3_mobilenet_v3_large`` (default), with the auxiliary FCN head on C2 (stride 8).
  torchvision builds its ASPP with the rates (12, 24, 36) of DeepLabV3 at output stride 8, but
  its MobileNetV3 trunk is dilated only in the last stage (``mobilenet_v3_large(dilated=True)``:
  C5, the 960-channel map the ASPP reads, is at output stride 16). The model here replaces that
  ASPP with ``ASPP(960, (6, 12, 18), 256)``, the rates DeepLabV3 uses at output stride 16 (as
  ``model.atrous_rates`` of the pipeline does); the rest of the head is torchvision's.
* ``lraspp_mobilenet_v3_large``: torchvision's LR-ASPP (no auxiliary head).

Recipes (``--recipe``):

* ``torchvision`` (default): torchvision's ``references/segmentation`` recipe for these two
  models (README there: ``--wd 0.000001`` and the script's default ``--lr 0.01``; its ``0.02``
  is the ResNet models' value): SGD with momentum 0.9, lr 0.01 (the auxiliary head's at 10x, as
  that script does), weight decay 1e-6, poly decay ``lr_t = lr (1 - t / T) ** 0.9`` per step
  over the run's ``T`` steps, random resize 0.5-2.0 (the project's :class:`TrainSet` at scale
  1.0 with ``scale_jitter [0.5, 2.0]``), loss ``CE(out) + 0.5 CE(aux)`` for deeplabv3 (plain
  ``CE(out)`` for lraspp). ``--lr`` and ``--weight-decay`` override the values (e.g. the
  ResNet recipe's 0.02 and 1e-4).
* ``pipeline``: the pipeline's own ``train`` recipe (optimiser, lr, momentum, weight decay,
  poly power, scale jitter), no auxiliary loss, like an expert at scale 1.0.

Both: crop, flip and batch size of the ``train`` params; class balancing as the pipeline
does it (:func:`hms_core.train.losses.class_weights`, ``(median_f / f_c) ** p`` from the
prepared ``meta.json``) with ``p = --class-balance`` (default ``train.class_balance``), on
every cross-entropy term; the pipeline's ``runtime`` settings (device, loader workers,
deterministic mode, mixed precision, channels-last; no ``torch.compile``).

Budget: by default the training images of the whole HMS pipeline,
:func:`hms_core.train.jobs.pipeline_images` (experts plus fine-tuning), in
``ceil(images / train.batch_size)`` steps; ``--steps N`` overrides. Reproducible: seeded by
``seed`` (:func:`seed_everything`), crops and their order from the run's deterministic sample
stream (:class:`StreamSampler`, :func:`sample_stream`).

Evaluation on the val split at full label resolution (:class:`EvalSet`), with the metrics of
``metrics/eval.json``, in three rows: ``reference`` (the model alone), ``reference_tta_<chain>``
(the model at every scale of the headline HMS chain, the last of ``evaluate.hms_scales``:
image resized by ``resize_image``, logits resized back, softmax probabilities averaged) and
``reference_tta_flip_<chain>`` (each scale's logits first averaged with those of the mirrored
image, as the pipeline's TTA-with-flip row does). ``evaluate.window`` is not applied (whole
images). ``--out DIR`` writes ``DIR/eval.json`` (the format of ``metrics/eval.json``) and
``DIR/reference.json`` (model, recipe, budget, wall times, parameters).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenet_v3_large
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large, lraspp_mobilenet_v3_large
from torchvision.models.segmentation.deeplabv3 import ASPP

from hms_core.config import load_params
from hms_core.data.dataset import IGNORE, EvalSet, TrainSet, read_index
from hms_core.data.labels import build_grouping
from hms_core.data.resize import resize, resize_image, scaled_size
from hms_core.evaluate.metrics import confusion_counts
from hms_core.evaluate.rows import chain_name, headline_chain, results
from hms_core.io import write_json
from hms_core.models.weights import load_checked, read_state_dict
from hms_core.runtime import distributed
from hms_core.runtime.speed import Speed, configure_backends
from hms_core.train.engine import build_optimizer as engine_optimizer
from hms_core.train.engine import optimizer_step, poly_schedule, resolve_device, seed_everything
from hms_core.train.jobs import finetune_pairs, pipeline_images
from hms_core.train.losses import class_weights
from hms_core.train.streams import sample_stream

MODELS = ("deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large")
RECIPES = ("torchvision", "pipeline")
# DeepLabV3's ASPP rates at output stride 16 (Chen et al. 2017); (12, 24, 36) is for stride 8.
OS16_RATES = (6, 12, 18)
ASPP_CHANNELS = 256
# torchvision references/segmentation, MobileNetV3 models: README (--wd 1e-6, --aux-loss for
# deeplabv3) and train.py (lr 0.01, momentum 0.9, poly 0.9 per iteration, aux head at 10x lr,
# loss out + 0.5 aux, RandomResize 0.5-2.0 of the base size).
TORCHVISION = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-6, "poly_power": 0.9,
               "scale_jitter": [0.5, 2.0], "aux_weight": 0.5, "aux_lr_mult": 10.0}


def build_model(name: str, num_classes: int, aux: bool, pretrained_backbone: str | None = None) -> nn.Module:
    """torchvision's ``name`` from scratch for ``num_classes`` classes (``aux``: deeplabv3's
    auxiliary FCN head), the deeplabv3 ASPP rebuilt with the output-stride-16 rates
    :data:`OS16_RATES`, the trunk loaded from ``pretrained_backbone`` (a state dict of
    torchvision's ``mobilenet_v3_large`` classification model) when given."""
    if name == "deeplabv3_mobilenet_v3_large":
        model = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes,
                                             aux_loss=aux)
        in_channels = model.classifier[0].convs[0][0].in_channels  # C5 of the trunk: 960
        model.classifier[0] = ASPP(in_channels, OS16_RATES, ASPP_CHANNELS)
    elif name == "lraspp_mobilenet_v3_large":
        if aux:
            raise ValueError("lraspp_mobilenet_v3_large has no auxiliary head")
        model = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes)
    else:
        raise ValueError(f"--model: expected one of {', '.join(MODELS)}, got {name!r}")
    if pretrained_backbone:
        load_backbone(model, pretrained_backbone)
    return model


def load_backbone(model: nn.Module, path: str | Path) -> None:
    """Load the ``features.*`` of a local MobileNetV3-Large classification state dict into the
    segmentation model's trunk (every key and shape checked; the classifier is not used)."""
    net = mobilenet_v3_large(weights=None, dilated=True)  # dilation changes no parameter shape
    state = read_state_dict(path)
    head_keys = [k for k in net.state_dict() if k.startswith("classifier.")]
    load_checked(net, {k: v for k, v in state.items() if k not in head_keys}, "mobilenet_v3_large", path,
                 skip=head_keys)
    # The trunk is an IntermediateLayerGetter over every block of net.features (up to C5).
    model.backbone.load_state_dict(net.features.state_dict())


def aspp_rates(model: nn.Module) -> tuple[int, ...]:
    """The dilation rates of a DeepLabV3 model's ASPP branches."""
    aspp = model.classifier[0]
    return tuple(int(branch[0].dilation[0]) for branch in list(aspp.convs)[1:-1])


def recipe_config(recipe: str, model: str, params: dict[str, Any], class_balance: float | None = None,
                  lr: float | None = None, weight_decay: float | None = None) -> dict[str, Any]:
    """The training settings of ``recipe`` for ``model``: optimiser, lr, momentum, weight decay,
    poly power, jitter, auxiliary weight and lr multiplier, plus the ``train`` params' crop,
    flip and batch size and the class balancing power."""
    train = params["train"]
    if recipe == "torchvision":
        cfg = dict(TORCHVISION)
        if model != "deeplabv3_mobilenet_v3_large":
            cfg.update(aux_weight=0.0, aux_lr_mult=1.0)
    elif recipe == "pipeline":
        cfg = {k: train[k] for k in ("optimizer", "lr", "momentum", "weight_decay", "poly_power")}
        cfg.update(scale_jitter=list(train["scale_jitter"]), aux_weight=0.0, aux_lr_mult=1.0)
    else:
        raise ValueError(f"--recipe: expected one of {', '.join(RECIPES)}, got {recipe!r}")
    cfg.update(recipe=recipe, crop=train["crop"], hflip=train["hflip"], batch_size=train["batch_size"],
               class_balance=train["class_balance"] if class_balance is None else class_balance)
    if lr is not None:
        cfg["lr"] = lr
    if weight_decay is not None:
        cfg["weight_decay"] = weight_decay
    return cfg


def budget(params: dict[str, Any], steps: int | None = None) -> tuple[int, int]:
    """``(steps, images)``: by default the whole HMS pipeline's training images
    (:func:`pipeline_images`) in ``ceil(images / train.batch_size)`` steps; with ``steps``,
    that many steps of ``train.batch_size`` crops."""
    batch = params["train"]["batch_size"]
    if steps is not None:
        if steps < 1:
            raise ValueError(f"--steps: expected a positive number, got {steps}")
        return steps, steps * batch
    images = pipeline_images(params)
    return math.ceil(images / batch), images


def build_optimizer(model: nn.Module, cfg: dict[str, Any], steps: int
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """Optimiser and poly schedule ``lr_t = lr * (1 - t / steps) ** poly_power`` (stepped once
    per step, so the last step ``t = steps - 1`` runs at ``lr * (1 / steps) ** poly_power``).
    Parameter groups as torchvision's script: trunk and head at ``lr``, the auxiliary head at
    ``lr * aux_lr_mult``."""
    aux = getattr(model, "aux_classifier", None)
    aux_ids = set() if aux is None else {id(p) for p in aux.parameters()}
    groups = [{"params": [p for p in model.parameters() if p.requires_grad and id(p) not in aux_ids]}]
    if aux is not None:
        groups.append({"params": [p for p in aux.parameters() if p.requires_grad],
                       "lr": cfg["lr"] * cfg["aux_lr_mult"]})
    optimizer = engine_optimizer(groups, cfg)  # the pipeline's sgd | adamw, here on parameter groups
    return optimizer, poly_schedule(optimizer, steps, cfg["poly_power"])


def reference_loss(outputs: dict[str, torch.Tensor], label: torch.Tensor, weights: torch.Tensor | None,
                   aux_weight: float) -> torch.Tensor:
    """``CE(out) + aux_weight * CE(aux)`` (class weights, ignore 255); ``CE(out)`` without an aux output."""
    loss = F.cross_entropy(outputs["out"].float(), label, weight=weights, ignore_index=IGNORE)
    if aux_weight and "aux" in outputs:
        loss = loss + aux_weight * F.cross_entropy(outputs["aux"].float(), label, weight=weights,
                                                   ignore_index=IGNORE)
    return loss


def train(model: nn.Module, dataset: TrainSet, cfg: dict[str, Any], steps: int, weights: torch.Tensor | None,
          speed: Speed, workers: int = 0, log_every: int = 50) -> dict[str, float]:
    """``steps`` steps of ``cfg``'s recipe on the deterministic sample stream of ``dataset``.
    Returns the final loss and the wall seconds."""
    optimizer, scheduler = build_optimizer(model, cfg, steps)
    scaler = speed.grad_scaler()
    speed.prepare_model(model).train()
    stream = sample_stream(dataset, {"batch_size": cfg["batch_size"], "steps": steps}, 0, workers, speed,
                           distributed.current())
    start, done, loss = time.perf_counter(), 0, None
    for image, label in stream:
        with speed.autocast():
            loss = reference_loss(model(image), label, weights, cfg["aux_weight"])
        optimizer_step(loss, optimizer, scaler)
        step_lr = scheduler.get_last_lr()[0]  # the lr this step ran at
        scheduler.step()
        done += 1
        if done % log_every == 0 or done == steps:
            value = loss.item()
            if not math.isfinite(value):
                raise RuntimeError(f"reference: loss is {value} at step {done}")
            print(f"reference: step {done}/{steps}, loss {value:.4f}, lr {step_lr:.2e}, "
                  f"{time.perf_counter() - start:.0f} s", file=sys.stderr)
    if done != steps:
        raise RuntimeError(f"reference: the data ran out after {done} of {steps} steps")
    if speed.device.type == "cuda":
        torch.cuda.synchronize(speed.device)
    return {"final_loss": float(loss.item()), "train_s": time.perf_counter() - start}


def inference_model(model: nn.Module) -> nn.Module:
    """``model`` for evaluation: eval mode, without the auxiliary head (training only)."""
    if getattr(model, "aux_classifier", None) is not None:
        model.aux_classifier = None
    return model.eval()


def scale_logits(logits_fn: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, scales: Sequence[float],
                 flip: bool) -> dict[float, tuple[torch.Tensor, torch.Tensor | None]]:
    """``{s: (p_s, m_s)}``: the float logits of ``image`` resized by ``s`` (:func:`resize_image`) and,
    with ``flip``, those of the mirrored resized image mirrored back (else ``None``); each model
    run once per scale and mirror."""
    size, out = tuple(image.shape[-2:]), {}
    for s in sorted({float(s) for s in scales}):
        x = resize_image(image, scaled_size(size, s))
        out[s] = (logits_fn(x).float(), logits_fn(x.flip(-1)).float().flip(-1) if flip else None)
    return out


def fuse_tta(outputs: dict[float, tuple[torch.Tensor, torch.Tensor | None]], scales: Sequence[float],
             size: tuple[int, int], flip: bool) -> torch.Tensor:
    """``mean_s softmax(up(p_s))`` over ``scales`` at ``size``; with ``flip`` each ``p_s`` first
    averaged with its mirror pass, ``(p_s + m_s) / 2`` (the pipeline's TTA rows)."""
    probs = []
    for s in sorted(float(s) for s in scales):
        logits, mirrored = outputs[s]
        if flip:
            logits = (logits + mirrored) / 2
        probs.append(resize(logits, size).softmax(1))
    return torch.stack(probs).mean(0)


def tta_probabilities(logits_fn: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor,
                      scales: Sequence[float], flip: bool) -> torch.Tensor:
    """The TTA probabilities of ``image`` over ``scales`` (:func:`scale_logits`, :func:`fuse_tta`)."""
    return fuse_tta(scale_logits(logits_fn, image, scales, flip), scales, tuple(image.shape[-2:]), flip)


def row_names(chain: Sequence[float]) -> dict[str, tuple[tuple[float, ...], bool] | None]:
    """Row name -> ``(scales, flip)`` of its TTA, ``None`` for the model alone."""
    chain = tuple(sorted(float(s) for s in chain))
    return {"reference": None, f"reference_tta_{chain_name(chain)}": (chain, False),
            f"reference_tta_flip_{chain_name(chain)}": (chain, True)}


@torch.no_grad()
def score(model: nn.Module, index: list[dict[str, str]], num_classes: int, chain: Sequence[float],
          speed: Speed) -> dict[str, np.ndarray]:
    """The confusion matrix of every row (:func:`row_names`) on ``index`` at full label resolution;
    per image the model runs once at each scale of ``chain`` and 1.0, and once mirrored."""
    model = speed.prepare_model(inference_model(model))
    logits_fn = lambda x: model(x)["out"]  # torchvision upsamples to x's size
    rows = row_names(chain)
    device = speed.device
    cms = {n: torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device) for n in rows}
    for image, label in EvalSet(index):
        image, label = speed.to_device(image[None]), label[None].to(device)
        size = tuple(image.shape[-2:])
        with speed.autocast():
            outputs = scale_logits(logits_fn, image, (*chain, 1.0), flip=True)
        for name, tta in rows.items():
            scores = outputs[1.0][0] if tta is None else fuse_tta(outputs, tta[0], size, tta[1])
            cms[name] += confusion_counts(scores.argmax(1), label, num_classes)
    return {n: cm.view(num_classes, num_classes).cpu().numpy() for n, cm in cms.items()}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", default="data/prepared", help="the prepare stage's output folder")
    parser.add_argument("--out", default=None, help="write DIR/eval.json and DIR/reference.json")
    parser.add_argument("--model", choices=MODELS, default=MODELS[0])
    parser.add_argument("--recipe", choices=RECIPES, default="torchvision")
    parser.add_argument("--steps", type=int, default=None,
                        help="train this many steps (default: the whole HMS pipeline's images / train.batch_size)")
    parser.add_argument("--class-balance", type=float, default=None,
                        help="class-balancing power p (default train.class_balance; 0 = plain CE)")
    parser.add_argument("--pretrained-backbone", default=None,
                        help="local state dict of torchvision's mobilenet_v3_large classification model")
    parser.add_argument("--lr", type=float, default=None, help="override the recipe's learning rate")
    parser.add_argument("--weight-decay", type=float, default=None, help="override the recipe's weight decay")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda[:N] (default runtime.device)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    params = load_params(args.params)
    runtime = params["runtime"]
    cfg = recipe_config(args.recipe, args.model, params, args.class_balance, args.lr, args.weight_decay)
    steps, images = budget(params, args.steps)
    device = resolve_device(args.device or runtime["device"], "--device" if args.device else "runtime.device")
    seed_everything(params["seed"], runtime["deterministic"])
    configure_backends(device, runtime["deterministic"])
    speed = Speed.from_runtime(runtime, device)
    grouping = build_grouping(params["data"]["grouping"])
    chain = headline_chain(params["evaluate"]["hms_scales"])

    if args.steps is None:
        t, f = params["train"], params["finetune"]
        source = (f"the whole HMS pipeline: {len(params['scales'])} experts x {t['steps']} steps x "
                  f"{t['batch_size']} + {f['steps']} fine-tuning steps x {f['batch_size']} x "
                  f"{len(finetune_pairs(params))} pairs")
    else:
        source = "--steps"
    print(f"reference: {args.model}, recipe {args.recipe}; budget {images} training images = {steps} steps of "
          f"{cfg['batch_size']} crops of {cfg['crop']} ({source})", file=sys.stderr)

    model = build_model(args.model, grouping.num_classes, aux=cfg["aux_weight"] > 0,
                        pretrained_backbone=args.pretrained_backbone)
    dataset = TrainSet(read_index(args.prepared, "train"), 1.0, cfg["crop"], cfg["scale_jitter"], cfg["hflip"],
                       params["seed"])
    weights = class_weights(args.prepared, cfg["class_balance"], device)
    trained = train(model, dataset, cfg, steps, weights, speed, runtime["workers"])

    start = time.perf_counter()
    cms = score(model, read_index(args.prepared, "val"), grouping.num_classes, chain, speed)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    eval_s = time.perf_counter() - start
    res = results(cms, grouping.class_names)
    summary = {
        "model": args.model + (" (ASPP rates 6, 12, 18)" if args.model.startswith("deeplabv3") else ""),
        "pretrained_backbone": args.pretrained_backbone or "none",
        "recipe": args.recipe, "steps": steps, "images": images, "budget": "pipeline" if args.steps is None else "steps",
        "batch": cfg["batch_size"], "crop": cfg["crop"], "lr": cfg["lr"],
        "optimizer": cfg["optimizer"], "momentum": cfg["momentum"], "weight_decay": cfg["weight_decay"],
        "poly_power": cfg["poly_power"], "scale_jitter": cfg["scale_jitter"], "hflip": cfg["hflip"],
        "aux_weight": cfg["aux_weight"], "aux_lr_mult": cfg["aux_lr_mult"], "class_balance": cfg["class_balance"],
        "seed": params["seed"], "device": str(device), "amp": speed.amp,
        "final_loss": round(trained["final_loss"], 4),
        "train_s": round(trained["train_s"], 1), "eval_s": round(eval_s, 1),
        # The model as evaluated (the auxiliary head is used in training only).
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
    }
    for name, r in res.items():
        print(f"reference: {name}: val mIoU {100 * r['mIoU']:.2f}, accuracy {100 * r['pixel_acc']:.2f}; IoU " +
              ", ".join(f"{c} {100 * v:.1f}" for c, v in r["iou"].items()))
    print(f"reference: {steps} steps ({images} images) in {trained['train_s']:.0f} s, evaluation {eval_s:.0f} s, "
          f"{summary['params_M']} M parameters")
    if args.out:
        write_json(Path(args.out) / "eval.json", res)
        write_json(Path(args.out) / "reference.json", summary)
    return {"summary": summary, "eval": res}


if __name__ == "__main__":
    main()
