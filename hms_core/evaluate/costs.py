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
from itertools import accumulate
from typing import Any, Callable, Iterable

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler is chatty on machines without a GPU

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from hms_core.evaluate.rows import Row, predict_rows
from hms_core.models.hms import HMS
from hms_core.runtime.speed import Speed


def count_parameters(modules: Iterable[nn.Module]) -> int:
    """Parameters of the union of ``modules`` (a shared module counts once)."""
    return sum({id(p): p.numel() for m in modules for p in m.parameters()}.values())


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
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    return max(accumulate((e.self_cpu_memory_usage for e in events), initial=0))


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


def row_modules(model: HMS, row: Row, explicit: HMS | None = None) -> list[nn.Module]:
    """The modules a row's prediction runs: branches, and the attention heads of HMS rows."""
    if row.kind == "explicit":
        return [explicit]
    if row.kind == "tta":
        return [model.branch(1.0)]
    used: list[nn.Module] = [model.branch(s) for s in row.scales]
    if row.kind == "hms":
        used += [model.attention[k] for k in {model.attention_key(s) for s in row.scales[:-1]} if k is not None]
    return used


@torch.no_grad()
def inference_costs(model: HMS, image: torch.Tensor, rows: dict[str, Row], speed: Speed,
                    explicit: HMS | None = None, repeats: int = 3) -> dict[str, dict]:
    """``{row: {params, ms_per_image, peak_mem_mb}}`` for one image batch, each row predicted
    alone through :func:`hms_core.evaluate.rows.predict_rows` under ``speed``'s autocast."""
    image = speed.to_device(image)
    out = {}
    for name, row in rows.items():
        def fn(one: dict[str, Row] = {name: row}) -> Any:
            with speed.autocast():
                return predict_rows(model, image, one, explicit)
        out[name] = {"params": count_parameters(row_modules(model, row, explicit)),
                     "ms_per_image": 1000 * time_call(fn, speed.device, repeats) / len(image),
                     "peak_mem_mb": peak_memory(fn, speed.device) / 2**20}
    return out
