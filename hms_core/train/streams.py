"""The training sample streams: a rank's device-ready batches of a run's deterministic sample
stream (:class:`hms_core.data.dataset.StreamSampler`), and the number of crops they draw.

In a multi-process job ``batch_size`` is per process: N processes train on global batches
of ``N * batch_size`` (see :mod:`hms_core.runtime.distributed`).
"""
from __future__ import annotations

from typing import Any, Iterator

import torch

from hms_core.data.dataset import StreamSampler, TrainSet, training_inputs
from hms_core.runtime.distributed import Context
from hms_core.runtime.speed import Speed


def sample_stream(dataset: TrainSet, cfg: dict[str, Any], start: int, workers: int, speed: Speed, ctx: Context
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's batches of steps ``start..cfg['steps']`` from the deterministic sample stream
    of ``dataset`` (seeded by ``dataset.seed``).

    Step ``t`` covers the global positions ``[t * N * b, (t + 1) * N * b)``
    (``N`` processes, per-process batch ``b``); rank ``r`` takes the ``r``-th slice.
    The loader ships uint8 crops (pinned on CUDA); they are normalised on the device here,
    for every training stream alike (:func:`hms_core.data.dataset.training_inputs`).
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


def images_seen(steps: int, cfg: dict[str, Any], ctx: Context, streams: int = 1) -> int:
    """Training crops drawn: ``steps * batch_size * processes * streams`` (HMS fine-tuning
    draws one batch per scale pair per step, so it has one stream per pair)."""
    return steps * cfg["batch_size"] * ctx.world_size * streams
