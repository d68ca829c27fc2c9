"""Per-scale expert training, HMS attention fine-tuning and the explicit-attention
baseline's fine-tuning (the library behind ``stages/train.py``, ``stages/finetune.py``
and ``stages/finetune_explicit.py``).

Each step runs as one module call (:class:`ExpertLoss`, :class:`PairLoss`,
:class:`ExplicitLoss`) so
that DistributedDataParallel and ``torch.compile`` see the whole forward pass
and loss. In a multi-process job ``batch_size`` is per process: N processes
train on global batches of ``N * batch_size`` (see :mod:`hms_core.distributed`).
"""
from __future__ import annotations

import hashlib
import json
import os
from itertools import pairwise
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from hms_core import distributed
from hms_core.data import IGNORE, StreamSampler, TrainSet, read_index, training_inputs
from hms_core.distributed import Context
from hms_core.engine import fit, resolve_device, seed_everything
from hms_core.explicit import ExplicitAttention, explicit_loss
from hms_core.hms import HMS, hms_pair_loss
from hms_core.io import save_checkpoint
from hms_core.labels import build_grouping
from hms_core.model import SegModel, build_seg_model
from hms_core.speed import Speed, configure_backends, cpu_state_dict


def model_meta(params: dict[str, Any]) -> dict[str, Any]:
    """Architecture fields saved with every checkpoint, taken from params."""
    return {
        "trunk": params["trunk"], "head": params["head"],
        "num_classes": build_grouping(params["data"]["grouping"]).num_classes,
        "output_stride": params["output_stride"], "head_channels": params["model"]["head_channels"],
        "atrous_rates": list(params["model"]["atrous_rates"]),
        "attention_channels": params["model"]["attention_channels"],
        "grouping": params["data"]["grouping"],
    }


def class_weights(prepared: str | Path, power: float, device: torch.device) -> torch.Tensor | None:
    """Class-balancing weights ``w_c = (median_f / f_c) ** power`` from the train split's pixel
    frequencies ``f_c`` (median-frequency balancing, Eigen & Fergus 2015, at ``power`` = 1).

    Rare classes (thin poles, distant people) otherwise vanish under plain
    cross-entropy in short runs. ``power`` = 0 gives plain cross-entropy.
    """
    if power == 0:
        return None
    meta_path = Path(prepared) / "meta.json"
    counts = torch.tensor(list(json.loads(meta_path.read_text())["splits"]["train"]["class_pixels"].values()),
                          dtype=torch.float64)
    freq = counts / counts.sum()
    present = freq > 0
    weights = torch.ones_like(freq)
    weights[present] = (freq[present].median() / freq[present]) ** power
    return weights.float().to(device)


def _stream(dataset: TrainSet, cfg: dict[str, Any], start: int, workers: int, speed: Speed, ctx: Context
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's batches of steps ``start..cfg['steps']`` from the deterministic sample stream
    of ``dataset`` (seeded by ``dataset.seed``).

    Step ``t`` covers the global positions ``[t * N * b, (t + 1) * N * b)``
    (``N`` processes, per-process batch ``b``); rank ``r`` takes the ``r``-th slice.
    The loader ships uint8 crops (pinned on CUDA); they are normalised on the device here,
    for every training stream alike (:func:`hms_core.data.training_inputs`).
    """
    b, n, seed = cfg["batch_size"], ctx.world_size, dataset.seed
    sampler = StreamSampler(len(dataset), seed, start * b * n, cfg["steps"] * b * n,
                            rank=ctx.rank, world_size=n, batch=b)
    # A private generator: creating the loader must not draw from the global RNG, whose
    # state the checkpoint restores (dropout masks would differ after a resume).
    loader = torch.utils.data.DataLoader(dataset, batch_size=b, sampler=sampler, num_workers=workers,
                                         pin_memory=speed.device.type == "cuda",
                                         persistent_workers=workers > 0,
                                         generator=torch.Generator().manual_seed(seed))
    for image, label in loader:
        yield training_inputs(speed.to_device(image), speed.to_device(label))


def ce_denominator(label: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The divisor of a mean cross-entropy: ``D = sum_i w[y_i]`` over the pixels not ignored
    (their count without class weights); computed without a host sync."""
    valid = label != IGNORE
    if weights is None:
        return valid.sum(dtype=torch.float64)
    padded = torch.cat([weights.to(torch.float64), weights.new_zeros(1, dtype=torch.float64)])
    return padded[torch.where(valid, label, len(weights))].sum()


class ExpertLoss(nn.Module):
    """``CE(model(image), label)`` (class weights, ignore 255) as one module call."""

    def __init__(self, model: SegModel, weights: torch.Tensor | None) -> None:
        super().__init__()
        self.model = model
        self.weights = weights  # a plain attribute, not a buffer: DDP need not broadcast it

    def forward(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.model(image), label, weight=self.weights, ignore_index=IGNORE)


class PairLoss(nn.Module):
    """The two-scale losses of every pair (one per pair) as one module call."""

    def __init__(self, model: HMS, pairs: list[tuple[float, float]], aux_weight: float,
                 weights: torch.Tensor | None) -> None:
        super().__init__()
        self.model, self.pairs, self.aux_weight, self.weights = model, pairs, aux_weight, weights

    def forward(self, batch: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        losses = []
        for (lo, hi), (image, label) in zip(self.pairs, batch):
            joint, p_lo, p_hi, _ = self.model.pair_forward(image, lo, hi)
            losses.append(hms_pair_loss(joint, p_lo, p_hi, label, self.aux_weight, self.weights))
        return losses


class ExplicitLoss(nn.Module):
    """The explicit-attention loss over all scales of one batch as one module call."""

    def __init__(self, model: ExplicitAttention, aux_weight: float, weights: torch.Tensor | None) -> None:
        super().__init__()
        self.model, self.aux_weight, self.weights = model, aux_weight, weights

    def forward(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        fused, logits, _ = self.model.explicit_forward(image)
        return explicit_loss(fused, logits, label, self.aux_weight, self.weights)


def _batch_loss(step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], weights: torch.Tensor | None,
                ctx: Context) -> Callable[[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """The loss of one ``(image, label)`` batch; in a multi-process job, of the global batch."""
    def loss_fn(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        image, label = batch
        loss = step(image, label)
        if not ctx.enabled:
            return loss
        return distributed.global_batch_loss([loss], [ce_denominator(label, weights)], ctx)
    return loss_fn


def _setup(params: dict[str, Any]) -> tuple[Speed, Context]:
    """Seed, pick this rank's device and the speed settings for it."""
    runtime = params["runtime"]
    seed_everything(params["seed"], runtime["deterministic"])
    ctx = distributed.current()
    device = distributed.rank_device(resolve_device(runtime["device"]), ctx)
    configure_backends(device, runtime["deterministic"])
    return Speed.from_runtime(runtime, device), ctx


def inputs_fingerprint(prepared: str | Path, start: nn.Module | None = None) -> str:
    """SHA-256 over the library's code, the training data (prepared index, labels' and
    images' sizes and modification times) and the weights training starts from.

    A checkpoint resumes only a run with the same fingerprint: after a change of code
    or data, DVC reruns the stage and the run must start afresh, not continue (or,
    if complete, skip) training on what no longer exists.
    """
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).resolve().parent.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    prepared = Path(prepared)
    for name in ("train.json", "meta.json"):
        digest.update((prepared / name).read_bytes())
    for entry in read_index(prepared, "train"):
        for key in ("image", "label"):
            st = os.stat(entry[key])
            digest.update(f"{entry[key]}:{st.st_size}:{st.st_mtime_ns}".encode())
    for name, tensor in (start.state_dict().items() if start is not None else ()):
        digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


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


def _run_id(run_id: dict[str, Any], ctx: Context, prepared: str | Path, start: nn.Module | None = None
            ) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: params, code, data, starting weights, and
    the number of processes (the global batch depends on it; the key is absent for one)."""
    run_id = {**run_id, "inputs": inputs_fingerprint(prepared, start)}
    return {**run_id, "world_size": ctx.world_size} if ctx.enabled else run_id


def images_seen(steps: int, cfg: dict[str, Any], ctx: Context, streams: int = 1) -> int:
    """Training crops drawn: ``steps * batch_size * processes * streams`` (HMS fine-tuning
    draws one batch per scale pair per step, so it has one stream per pair)."""
    return steps * cfg["batch_size"] * ctx.world_size * streams


def train_expert(params: dict[str, Any], scale: float, prepared: str | Path, out: str | Path,
                 checkpoint: str | Path, live: Any | None = None) -> dict[str, Any]:
    """Train trunk + head at image scale ``scale`` with cross-entropy (ignore 255)."""
    cfg, seed = params["train"], params["seed"]
    speed, ctx = _setup(params)
    meta = model_meta(params)
    model = speed.prepare_model(build_seg_model(meta, params["pretrained"]))
    distributed.convert_sync_batchnorm(model, ctx, speed.device)
    index = read_index(prepared, "train")
    dataset = TrainSet(index, scale, cfg["crop"], cfg["scale_jitter"], cfg["hflip"], seed)
    weights = class_weights(prepared, cfg["class_balance"], speed.device)
    step = speed.maybe_compile(distributed.wrap(ExpertLoss(model, weights), ctx, speed.device))
    loss_fn = _batch_loss(step, weights, ctx)

    run_id = {"stage": "train", "scale": scale, "seed": seed, "meta": meta, "train": cfg,
              "pretrained": params["pretrained"]}
    summary = fit(model, loss_fn, lambda start: _stream(dataset, cfg, start, params["runtime"]["workers"],
                                                        speed, ctx),
                  cfg, checkpoint, _run_id(run_id, ctx, prepared), live, desc=f"train scale {scale}", speed=speed, ctx=ctx)
    images = images_seen(cfg["steps"], cfg, ctx)
    meta = {**meta, "scale": scale, "steps": cfg["steps"], "images": images, "epochs": images / len(index)}
    if ctx.is_main:
        save_checkpoint(out, {"meta": meta, "state_dict": cpu_state_dict(model)})
    return {**summary, "epochs": meta["epochs"]}


def finetune_pairs(params: dict[str, Any]) -> list[tuple[float, float]]:
    """Scale pairs (lo, hi) the attention is trained on: adjacent experts, or the shared pair."""
    if params["hms"]["mode"] == "shared":
        return [tuple(float(s) for s in params["hms"]["shared_pair"])]
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

    def batches(start: int) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        streams = [_stream(d, cfg, start, params["runtime"]["workers"], speed, ctx) for d in datasets]
        return (list(b) for b in zip(*streams))

    def loss_fn(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        losses = step(batch)
        denominators = [ce_denominator(label, weights) for _, label in batch] if ctx.enabled else []
        return distributed.global_batch_loss(losses, denominators, ctx)

    run_id = {"stage": "finetune", "seed": seed, "meta": model.meta, "finetune": cfg, "pairs": pairs}
    summary = fit(model, loss_fn, batches, cfg, checkpoint, _run_id(run_id, ctx, prepared, model), live, desc="finetune",
                  speed=speed, ctx=ctx)
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
    loss_fn = _batch_loss(step, weights, ctx)

    run_id = {"stage": "finetune_explicit", "seed": seed, "meta": model.meta, "finetune": cfg}
    summary = fit(model, loss_fn, lambda start: _stream(dataset, cfg, start, params["runtime"]["workers"],
                                                        speed, ctx),
                  cfg, checkpoint, _run_id(run_id, ctx, prepared, model), live, desc="finetune explicit", speed=speed, ctx=ctx)
    meta = {**model.meta, "finetune_steps": cfg["steps"], "train_all": cfg["train_all"],
            "finetune_images": images_seen(cfg["steps"], cfg, ctx)}
    if ctx.is_main:
        save_checkpoint(out, {"meta": meta, "state_dict": cpu_state_dict(model)})
    return summary
