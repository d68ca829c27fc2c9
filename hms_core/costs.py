"""Inference and training costs: parameters, time per image, peak memory.

Peak memory is the largest amount of tensor memory alive at once during the
call: ``torch.cuda.max_memory_allocated`` on a GPU, and on the CPU the peak of
the allocation timeline recorded by the PyTorch profiler (allocations minus
frees, in order).
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable, Iterable, Sequence

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler is chatty on machines without a GPU

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from hms_core.hms import HMS


def count_parameters(modules: Iterable[nn.Module]) -> int:
    """Parameters of the union of ``modules`` (a shared module counts once)."""
    seen: dict[int, int] = {}
    for m in modules:
        for p in m.parameters():
            seen[id(p)] = p.numel()
    return sum(seen.values())


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes of tensor memory allocated while ``fn`` runs (beyond what was already held)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def time_call(fn: Callable[[], Any], device: torch.device, repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in seconds over ``repeats`` runs, after ``warmup`` runs."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def row_calls(model: HMS, image: torch.Tensor, rows: dict[str, Sequence[float] | str],
              explicit: HMS | None = None) -> dict[str, tuple[Callable[[], Any], list[nn.Module]]]:
    """For each table row, the inference call it makes and the modules it uses.

    ``rows`` maps a row name to its scales, or to ``"avg"``/``"max"`` pooling over
    ``model.scales``, or to ``"explicit"``.
    """
    calls = {}
    for name, spec in rows.items():
        if spec == "explicit":
            calls[name] = (lambda: explicit(image), [explicit])
            continue
        scales = model.scales if spec in ("avg", "max") else [float(s) for s in spec]
        used = [model.branch(s) for s in scales]
        if len(scales) == 1:
            s = scales[0]
            calls[name] = (lambda s=s: model.scale_forward(image, s, attention=False), used)
        elif spec in ("avg", "max"):
            calls[name] = (lambda: [model.scale_forward(image, s, attention=False) for s in scales], used)
        else:
            heads = [model.attention[k] for k in {model.attention_key(s) for s in sorted(scales)[:-1]}
                     if k is not None]
            calls[name] = (lambda scales=scales: model(image, scales), used + heads)
    return calls


@torch.no_grad()
def inference_costs(model: HMS, image: torch.Tensor, rows: dict[str, Sequence[float] | str],
                    device: torch.device, explicit: HMS | None = None, repeats: int = 3) -> dict[str, dict]:
    """``{row: {params, ms_per_image, peak_mem_mb}}`` for one image batch of size 1."""
    out = {}
    for name, (fn, modules) in row_calls(model, image.to(device), rows, explicit).items():
        out[name] = {"params": count_parameters(modules),
                     "ms_per_image": 1000 * time_call(fn, device, repeats) / len(image),
                     "peak_mem_mb": peak_memory(fn, device) / 2**20}
    return out
