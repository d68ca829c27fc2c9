"""Per-scale expert training, HMS attention fine-tuning and the explicit-attention
baseline's fine-tuning (the library behind ``stages/train.py``, ``stages/finetune.py``
and ``stages/finetune_explicit.py``).

Each step runs as one module call (:mod:`hms_core.train.losses`) so that
DistributedDataParallel and ``torch.compile`` see the whole forward pass and loss.
In a multi-process job ``batch_size`` is per process: N processes train on global
batches of ``N * batch_size`` (see :mod:`hms_core.runtime.distributed`).
"""
from __future__ import annotations

import math
from itertools import pairwise
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from hms_core.data.dataset import TrainSet, read_index
from hms_core.io import load_checkpoint, save_checkpoint
from hms_core.models.explicit import ExplicitAttention
from hms_core.models.hms import HMS
from hms_core.models.segmodel import build_seg_model, model_meta
from hms_core.models.weights import load_checked
from hms_core.runtime import distributed
from hms_core.runtime.distributed import Context
from hms_core.runtime.speed import Speed, configure_backends, cpu_state_dict
from hms_core.train.engine import fit, resolve_device, seed_everything
from hms_core.train.fingerprint import resume_run_id
from hms_core.train.losses import ExpertLoss, ExplicitLoss, PairLoss, batch_loss, class_weights, pair_batch_loss
from hms_core.train.streams import images_seen, sample_stream


def _setup(params: dict[str, Any]) -> tuple[Speed, Context]:
    """Seed, pick this rank's device and the speed settings for it."""
    runtime = params["runtime"]
    seed_everything(params["seed"], runtime["deterministic"])
    ctx = distributed.current()
    device = distributed.rank_device(resolve_device(runtime["device"]), ctx)
    configure_backends(device, runtime["deterministic"])
    return Speed.from_runtime(runtime, device), ctx


def _finetune_setup(params: dict[str, Any], model: HMS, prepared: str | Path
                    ) -> tuple[Speed, Context, list[dict[str, str]], torch.Tensor | None]:
    """Seed and device, branches frozen unless ``finetune.train_all``, the train index and
    the class weights: what HMS and explicit fine-tuning share."""
    speed, ctx = _setup(params)
    model.freeze_branches(not params["finetune"]["train_all"])
    speed.prepare_model(model)
    distributed.convert_sync_batchnorm(model, ctx, speed.device)
    weights = class_weights(prepared, params["finetune"]["class_balance"], speed.device)
    return speed, ctx, read_index(prepared, "train"), weights


def pipeline_images(params: dict[str, Any]) -> int:
    """Training images of the whole HMS pipeline, per process:
    ``I = S * n_train * b_train + n_ft * b_ft * P`` (``S`` experts of ``n_train`` steps of
    ``b_train`` crops, then ``n_ft`` fine-tuning steps of one ``b_ft`` batch per pair, ``P`` pairs)."""
    train, finetune = params["train"], params["finetune"]
    return (len(params["scales"]) * train["steps"] * train["batch_size"]
            + finetune["steps"] * finetune["batch_size"] * len(finetune_pairs(params)))


def control_steps(params: dict[str, Any]) -> int:
    """Steps of the equal-budget control: ``ceil(I / b_train)`` (:func:`pipeline_images`), so that one
    scale-1.0 network trained with the ``train`` recipe sees as many images as the whole HMS pipeline."""
    return math.ceil(pipeline_images(params) / params["train"]["batch_size"])


def load_expert(model: nn.Module, path: str | Path, meta: dict[str, Any]) -> None:
    """Start ``model`` from the trained expert saved at ``path`` (a warm start): the expert must have the
    architecture ``meta`` (:func:`model_meta`); every key and shape is checked."""
    saved = load_checkpoint(path)
    found = {k: saved["meta"].get(k) for k in meta}
    if found != meta:
        raise ValueError(f"{path}: an expert of {found}, not of this model {meta}")
    load_checked(model, saved["state_dict"], "the model", path)


def train_expert(params: dict[str, Any], scale: float, prepared: str | Path, out: str | Path,
                 checkpoint: str | Path, live: Any | None = None, steps: int | None = None,
                 init: str | Path | None = None) -> dict[str, Any]:
    """Train trunk + head at image scale ``scale`` with cross-entropy (ignore 255), for ``train.steps``
    steps or ``steps`` (the equal-budget control: :func:`control_steps`), from the trained expert saved
    at ``init`` when given (:func:`load_expert`), else from ``pretrained`` or random weights."""
    cfg, seed = params["train"], params["seed"]
    if steps is not None:
        cfg = {**cfg, "steps": steps}
    speed, ctx = _setup(params)
    meta = model_meta(params)
    model = build_seg_model(meta, params["pretrained"])
    if init is not None:
        load_expert(model, init, meta)
    model = speed.prepare_model(model)
    distributed.convert_sync_batchnorm(model, ctx, speed.device)
    index = read_index(prepared, "train")
    dataset = TrainSet(index, scale, cfg["crop"], cfg["scale_jitter"], cfg["hflip"], seed)
    weights = class_weights(prepared, cfg["class_balance"], speed.device)
    step = speed.maybe_compile(distributed.wrap(ExpertLoss(model, weights), ctx, speed.device))
    loss_fn = batch_loss(step, weights, ctx)

    # dict(): the checkpoint holds plain data only (cfg may be hms_core.config.Tracked).
    run_id = {"stage": "train", "scale": scale, "seed": seed, "meta": meta, "train": dict(cfg),
              "pretrained": params["pretrained"], **({} if init is None else {"init": str(init)})}
    summary = fit(model, loss_fn, lambda start: sample_stream(dataset, cfg, start, params["runtime"]["workers"],
                                                             speed, ctx),
                  # The starting weights are part of the fingerprint: new pretrained weights start afresh.
                  cfg, checkpoint, resume_run_id(run_id, ctx, prepared, model), live, desc=f"train scale {scale}",
                  speed=speed, ctx=ctx)
    images = images_seen(cfg["steps"], cfg, ctx)
    meta = {**meta, "scale": scale, "steps": cfg["steps"], "images": images, "epochs": images / len(index),
            **({} if init is None else {"init": str(init)})}
    if ctx.is_main:
        save_checkpoint(out, {"meta": meta, "state_dict": cpu_state_dict(model)})
    return {**summary, "epochs": meta["epochs"]}


def finetune_pairs(params: dict[str, Any]) -> list[tuple[float, float]]:
    """Scale pairs (lo, hi) the attention is trained on: adjacent experts, or ``hms.shared_pairs``."""
    if params["hms"]["mode"] == "shared":
        return [(float(lo), float(hi)) for lo, hi in params["hms"]["shared_pairs"]]
    return list(pairwise(sorted(float(s) for s in params["scales"])))


def _unreached_parameters(model: HMS, pairs: list[tuple[float, float]]) -> list[str]:
    """Names of trainable parameters that no pair's forward pass uses (no gradient, ever)."""
    reached = set()
    for lo, hi in pairs:
        modules = [model.attention[model.attention_key(lo)]]
        if not model.branches_frozen:
            modules += [model.branch(lo), model.branch(hi)]
        reached |= {id(p) for m in modules for p in m.parameters()}
    return [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in reached]


def finetune_hms(params: dict[str, Any], model: HMS, prepared: str | Path, out: str | Path,
                 checkpoint: str | Path, live: Any | None = None) -> dict[str, Any]:
    """Train the attention heads on two-scale pairs with the loss of Tao et al. (Sec. 3.2).

    Each step draws one batch per pair (a crop at the pair's high scale) and sums
    ``CE(joint) + w * (CE(up(p_lo)) + CE(p_hi))`` over the pairs. The branches
    are frozen unless ``finetune.train_all``.
    """
    cfg, seed = params["finetune"], params["seed"]
    speed, ctx, index, weights = _finetune_setup(params, model, prepared)
    pairs = finetune_pairs(params)
    # Each pair has its own sample stream (seed offset) so pairs see different crops.
    datasets = [TrainSet(index, hi, cfg["crop"], cfg["scale_jitter"], cfg["hflip"], seed + 101 * (i + 1))
                for i, (lo, hi) in enumerate(pairs)]
    # DDP skips frozen parameters; it must search the graph for unused ones only when some
    # trainable module is not reached by the pairs (it costs a graph traversal per step).
    step = speed.maybe_compile(distributed.wrap(
        PairLoss(model, pairs, cfg["aux_weight"], weights), ctx, speed.device,
        find_unused_parameters=bool(_unreached_parameters(model, pairs))))
    loss_fn = pair_batch_loss(step, weights, ctx)

    def batches(start: int) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        streams = [sample_stream(d, cfg, start, params["runtime"]["workers"], speed, ctx) for d in datasets]
        return (list(b) for b in zip(*streams))

    run_id = {"stage": "finetune", "seed": seed, "meta": model.meta, "finetune": dict(cfg), "pairs": pairs}
    summary = fit(model, loss_fn, batches, cfg, checkpoint, resume_run_id(run_id, ctx, prepared, model), live,
                  desc="finetune", speed=speed, ctx=ctx)
    meta = {**model.meta, "finetune_steps": cfg["steps"], "train_all": cfg["train_all"],
            "finetune_images": images_seen(cfg["steps"], cfg, ctx, len(pairs)), "pairs": [list(p) for p in pairs]}
    if ctx.is_main:
        save_checkpoint(out, {"meta": meta, "state_dict": cpu_state_dict(model)})
    return summary


def finetune_explicit(params: dict[str, Any], model: ExplicitAttention, prepared: str | Path,
                      out: str | Path, checkpoint: str | Path, live: Any | None = None) -> dict[str, Any]:
    """Train the explicit head on all scales together with HMS's fine-tuning budget in images:
    ``finetune`` params (batch, crop at scale 1.0, optimiser) for ``finetune.steps * P`` steps,
    ``P`` the number of HMS pairs (HMS draws one batch per pair per step). Branches frozen
    unless ``finetune.train_all``."""
    cfg = {**params["finetune"], "steps": params["finetune"]["steps"] * len(finetune_pairs(params))}
    seed = params["seed"]
    speed, ctx, index, weights = _finetune_setup(params, model, prepared)
    dataset = TrainSet(index, 1.0, cfg["crop"], cfg["scale_jitter"], cfg["hflip"], seed + 101)
    step = speed.maybe_compile(distributed.wrap(ExplicitLoss(model, cfg["aux_weight"], weights), ctx,
                                                speed.device))
    loss_fn = batch_loss(step, weights, ctx)

    run_id = {"stage": "finetune_explicit", "seed": seed, "meta": model.meta, "finetune": cfg}
    summary = fit(model, loss_fn, lambda start: sample_stream(dataset, cfg, start, params["runtime"]["workers"],
                                                             speed, ctx),
                  cfg, checkpoint, resume_run_id(run_id, ctx, prepared, model), live, desc="finetune explicit",
                  speed=speed, ctx=ctx)
    meta = {**model.meta, "finetune_steps": cfg["steps"], "train_all": cfg["train_all"],
            "finetune_images": images_seen(cfg["steps"], cfg, ctx)}
    if ctx.is_main:
        save_checkpoint(out, {"meta": meta, "state_dict": cpu_state_dict(model)})
    return summary
