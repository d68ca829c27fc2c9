"""Transplant per-scale DeepLab experts into the HMS model.

In the manner of nanoGPT's ``from_pretrained``: an explicit key mapping,
every key and shape checked, tensors copied under ``no_grad``, the result
loaded with ``strict=True``, and a short report.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hms_core.io import load_checkpoint
from hms_core.models.hms import HMS, SHARED, scale_key
from hms_core.models.segmodel import MODEL_META_KEYS, model_meta


class TransplantError(ValueError):
    """A source checkpoint does not fit the HMS model."""


def key_mapping(mode: str, scales: list[float], source_keys: dict[float, list[str]],
                shared_source_scale: float) -> dict[str, tuple[float, str]]:
    """HMS key -> (source scale, source key).

    experts: ``branches.s{scale}.{k} <- expert(scale).{k}`` for every scale;
    shared:  ``branches.shared.{k} <- expert(shared_source_scale).{k}``.
    """
    if mode == SHARED:
        return {f"branches.{SHARED}.{k}": (shared_source_scale, k) for k in source_keys[shared_source_scale]}
    return {f"branches.{scale_key(s)}.{k}": (s, k) for s in scales for k in source_keys[s]}


def check_sources(meta: dict[str, Any], sources: dict[float, tuple[Path, dict[str, Any]]]) -> None:
    """Every source must have the architecture of ``meta`` (trunk, head, classes, ...)."""
    for scale, (path, ckpt) in sources.items():
        for key in MODEL_META_KEYS:
            if ckpt["meta"].get(key) != meta[key]:
                raise TransplantError(f"{path}: {key} is {ckpt['meta'].get(key)!r}, expected {meta[key]!r} "
                                      f"(retrain the scale-{scale} expert with the current params)")


def transplant(meta: dict[str, Any], source_paths: dict[float, str | Path],
               shared_source_scale: float = 1.0, seed: int = 0, model_cls: type[HMS] = HMS
               ) -> tuple[HMS, list[str]]:
    """Build an HMS model (``meta``: architecture + mode + scales) from expert checkpoints.

    Returns the model and the report lines. Attention heads are freshly initialised
    from ``seed``; every branch tensor comes from a source checkpoint. ``model_cls``
    may be a subclass with other attention heads (the explicit baseline). The
    model's ``meta`` also records the experts' ``steps``, ``images`` and ``epochs``.
    """
    sources = {float(s): (Path(p), load_checkpoint(p)) for s, p in source_paths.items()}
    check_sources(meta, sources)
    torch.manual_seed(seed)
    model = model_cls(meta)
    target = model.state_dict()
    mapping = key_mapping(meta["mode"], model.scales,
                          {s: list(c["state_dict"]) for s, (_, c) in sources.items()},
                          float(shared_source_scale))
    branch_keys = {k for k in target if k.startswith("branches.")}
    missing = sorted(branch_keys - set(mapping))
    unexpected = sorted(set(mapping) - branch_keys)
    if missing or unexpected:
        bad = (missing or unexpected)[0]
        raise TransplantError(f"key mapping mismatch: {len(missing)} HMS keys without a source, "
                              f"{len(unexpected)} source keys without a target (first: {bad})")
    new_state = dict(target)
    with torch.no_grad():
        for dst, (scale, src) in mapping.items():
            path, ckpt = sources[scale]
            tensor = ckpt["state_dict"][src]
            if tensor.shape != target[dst].shape:
                raise TransplantError(f"{path}: {src} has shape {tuple(tensor.shape)}, "
                                      f"HMS {dst} expects {tuple(target[dst].shape)}")
            new_state[dst] = tensor.detach().clone().to(target[dst].dtype)
    model.load_state_dict(new_state, strict=True)
    # The experts' training budget goes with the model into the results table; read it
    # from the shared source (every expert of a run trains with the same budget).
    _, budget = sources.get(float(shared_source_scale), next(iter(sources.values())))
    model.meta.update({k: budget["meta"][k] for k in ("steps", "images", "epochs") if k in budget["meta"]})
    report = [f"transplant ({meta['mode']} mode): {len(mapping)} tensors copied, shapes checked"]
    for scale, (path, ckpt) in sorted(sources.items()):
        used = sum(1 for s, _ in mapping.values() if s == scale)
        if used:
            n = sum(t.numel() for t in ckpt["state_dict"].values())
            branch = SHARED if meta["mode"] == SHARED else scale_key(scale)
            report.append(f"  {path}: {used} tensors, {n:,} values -> branches.{branch}")
    att = sum(p.numel() for p in model.attention.parameters())
    report.append(f"  attention heads {list(model.attention)}: {att:,} parameters, newly initialised")
    return model, report


def model_scales(params: dict[str, Any]) -> list[float]:
    """The scales the model runs at: the experts' (``scales``) and, in shared mode, where its
    one branch runs is free, so also every scale of ``evaluate.hms_scales`` (the explicit
    baseline then fuses the same scales as the longest HMS chain)."""
    scales = {float(s) for s in params["scales"]}
    if params["hms"]["mode"] == SHARED:
        scales |= {float(s) for chain in params["evaluate"]["hms_scales"] for s in chain}
    return sorted(scales)


def transplant_experts(params: dict[str, Any], experts_dir: str | Path, model_cls: type[HMS] = HMS
                       ) -> tuple[HMS, list[str]]:
    """Transplant the experts ``{experts_dir}/scale_{s}/model.pt`` for every scale in params.

    Returns the model (its ``meta``: architecture, mode, scales, the experts'
    training steps and epochs) and the report lines.
    """
    paths = {s: Path(experts_dir) / f"scale_{s}" / "model.pt" for s in sorted(float(s) for s in params["scales"])}
    for s, p in paths.items():
        if not p.is_file():
            raise FileNotFoundError(f"{p}: expert of scale {s} not found (run the train stage)")
    meta = {**model_meta(params), "mode": params["hms"]["mode"], "scales": model_scales(params)}
    return transplant(meta, paths, params["hms"]["shared_source_scale"], params["seed"], model_cls)


def single_network(path: str | Path, scales: list[float]) -> HMS:
    """One trained network (a ``train`` stage's ``model.pt``, e.g. the equal-budget control) as a
    shared-mode HMS over ``scales``, so that the evaluation runs it through the same rows.
    Its attention head is unused (seeded, never trained): only single and TTA rows read it."""
    meta = {**load_checkpoint(path)["meta"], "mode": SHARED, "scales": sorted(float(s) for s in scales)}
    meta.pop("scale", None)
    model, _ = transplant(meta, {1.0: path}, 1.0)
    return model
