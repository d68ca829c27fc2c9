"""Per-scale expert training and HMS attention fine-tuning (the library behind
``stages/train.py`` and ``stages/finetune.py``)."""
from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from hms_core.data import IGNORE, StreamSampler, TrainSet, read_index
from hms_core.engine import fit, resolve_device, seed_everything
from hms_core.hms import HMS, hms_pair_loss
from hms_core.io import save_checkpoint
from hms_core.labels import build_grouping
from hms_core.model import build_seg_model


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


def _stream(dataset: TrainSet, cfg: dict[str, Any], seed: int, start: int, workers: int,
            device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of steps ``start..cfg['steps']`` from the deterministic sample stream."""
    b = cfg["batch_size"]
    sampler = StreamSampler(len(dataset), seed, start * b, cfg["steps"] * b)
    loader = torch.utils.data.DataLoader(dataset, batch_size=b, sampler=sampler, num_workers=workers,
                                         pin_memory=device.type == "cuda",
                                         persistent_workers=workers > 0)
    for image, label in loader:
        yield image.to(device, non_blocking=True), label.to(device, non_blocking=True)


def epochs(cfg: dict[str, Any], n_images: int) -> float:
    return cfg["steps"] * cfg["batch_size"] / n_images


def train_expert(params: dict[str, Any], scale: float, prepared: str | Path, out: str | Path,
                 checkpoint: str | Path, live: Any | None = None) -> dict[str, Any]:
    """Train trunk + head at image scale ``scale`` with cross-entropy (ignore 255)."""
    cfg, seed = params["train"], params["seed"]
    seed_everything(seed, params["runtime"]["deterministic"])
    device = resolve_device(params["runtime"]["device"])
    meta = model_meta(params)
    model = build_seg_model(meta, params["pretrained"]).to(device)
    index = read_index(prepared, "train")
    dataset = TrainSet(index, scale, cfg["crop"], cfg["scale_jitter"], cfg["hflip"], seed)
    weights = class_weights(prepared, cfg["class_balance"], device)

    def loss_fn(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        image, label = batch
        return F.cross_entropy(model(image), label, weight=weights, ignore_index=IGNORE)

    run_id = {"stage": "train", "scale": scale, "seed": seed, "meta": meta, "train": cfg,
              "pretrained": params["pretrained"]}
    summary = fit(model, loss_fn, lambda start: _stream(dataset, cfg, seed, start,
                                                        params["runtime"]["workers"], device),
                  cfg, checkpoint, run_id, live, desc=f"train scale {scale}")
    meta = {**meta, "scale": scale, "steps": cfg["steps"], "epochs": epochs(cfg, len(index))}
    save_checkpoint(out, {"meta": meta, "state_dict": model.cpu().state_dict()})
    return {**summary, "epochs": meta["epochs"]}


def finetune_pairs(params: dict[str, Any]) -> list[tuple[float, float]]:
    """Scale pairs (lo, hi) the attention is trained on: adjacent experts, or the shared pair."""
    if params["hms"]["mode"] == "shared":
        return [tuple(float(s) for s in params["hms"]["shared_pair"])]
    return list(pairwise(sorted(float(s) for s in params["scales"])))


def finetune_hms(params: dict[str, Any], model: HMS, prepared: str | Path, out: str | Path,
                 checkpoint: str | Path, live: Any | None = None) -> dict[str, Any]:
    """Train the attention heads on two-scale pairs with the loss of Tao et al. (Sec. 3.2).

    Each step draws one batch per pair (a crop at the pair's high scale) and sums
    ``CE(joint) + w * (CE(up(p_lo)) + CE(p_hi))`` over the pairs. The branches
    are frozen unless ``finetune.train_all``.
    """
    cfg, seed = params["finetune"], params["seed"]
    seed_everything(seed, params["runtime"]["deterministic"])
    device = resolve_device(params["runtime"]["device"])
    model.freeze_branches(not cfg["train_all"])
    model.to(device)
    index = read_index(prepared, "train")
    pairs = finetune_pairs(params)
    weights = class_weights(prepared, cfg["class_balance"], device)
    # Each pair has its own sample stream (seed offset) so pairs see different crops.
    datasets = [TrainSet(index, hi, cfg["crop"], cfg["scale_jitter"], cfg["hflip"], seed + 101 * (i + 1))
                for i, (lo, hi) in enumerate(pairs)]

    def batches(start: int) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        streams = [_stream(d, cfg, d.seed, start, params["runtime"]["workers"], device) for d in datasets]
        return (list(b) for b in zip(*streams))

    def loss_fn(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        total = 0.0
        for (lo, hi), (image, label) in zip(pairs, batch):
            joint, p_lo, p_hi, _ = model.pair_forward(image, lo, hi)
            total = total + hms_pair_loss(joint, p_lo, p_hi, label, cfg["aux_weight"], weights)
        return total

    run_id = {"stage": "finetune", "seed": seed, "meta": model.meta, "finetune": cfg, "pairs": pairs}
    summary = fit(model, loss_fn, batches, cfg, checkpoint, run_id, live, desc="finetune")
    meta = {**model.meta, "finetune_steps": cfg["steps"], "finetune_epochs": epochs(cfg, len(index)),
            "pairs": [list(p) for p in pairs]}
    save_checkpoint(out, {"meta": meta, "state_dict": model.cpu().state_dict()})
    return summary
