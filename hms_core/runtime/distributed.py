"""Multi-process training: torchrun relaunch, process group, DDP wrapping, global-batch loss.

``runtime.gpus: G > 1`` makes a stage script exec itself as
``python -m torch.distributed.run --standalone --nproc_per_node=G <script> <args>``;
each of the G processes trains on one device (``cuda:LOCAL_RANK``, or the CPU
with the gloo backend) with a per-process batch of ``batch_size``.
``runtime.nodes: M > 1`` runs the same command on each of M machines instead,
with ``--nnodes=M`` and a c10d rendezvous at ``runtime.rdzv_endpoint`` in place
of ``--standalone``: the job then has ``N = G * M`` processes, ranked globally.
Below, ``N`` is that world size, whatever the split into nodes. Rank ``r``
takes the ``r``-th slice of every global batch of ``N * batch_size`` stream
positions, so the N processes together see exactly the samples of one process
with batch ``N * batch_size``.

Gradients: DDP averages them over the ranks, ``g = (1/N) sum_r grad(L_r)``.
A mean cross-entropy over one batch is ``L = sum_i w_i l_i / D`` with
``D = sum_i w_i`` (class weight ``w_i`` of pixel ``i``'s label, 0 for ignored
pixels), so each rank's mean ``L_r = S_r / D_r`` is rescaled to
``L_r * N * D_r / D`` (``D = sum_r D_r``, one all-reduce); then
``g = grad(sum_r S_r / D)``, the gradient of the global batch's mean loss.
"""
from __future__ import annotations

import inspect
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

_DDP_ARGS = frozenset(inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters)


@dataclass(frozen=True)
class Context:
    """This process's place in the job: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, shows progress and writes files."""
        return self.rank == 0


SINGLE = Context()


def launched() -> bool:
    """True inside a torchrun worker (torchrun sets ``LOCAL_RANK``)."""
    return "LOCAL_RANK" in os.environ


def current() -> Context:
    """The context of this process: from the initialised process group, else a single process."""
    if dist.is_available() and dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return SINGLE


def check_devices(device: torch.device, gpus: int) -> None:
    """Fail early, naming the key, when ``runtime.gpus`` cannot be honoured on ``device``."""
    if gpus <= 1 or device.type != "cuda":
        return  # on the CPU, N > 1 runs N gloo processes
    if device.index is not None:
        raise ValueError(f"runtime.device: {str(device)!r} names one GPU, but runtime.gpus is {gpus}; "
                         f"use auto or cuda (process r takes cuda:r)")
    if torch.cuda.device_count() < gpus:
        raise ValueError(f"runtime.gpus: {gpus} processes asked for, but {torch.cuda.device_count()} "
                         f"CUDA devices are visible")


def torchrun_command(nproc: int, argv: Sequence[str], nodes: int = 1, rdzv_endpoint: str = "none",
                     rdzv_id: str = "hms") -> list[str]:
    """The command that runs ``argv`` (a script and its arguments) in ``nproc`` processes on this node.

    One node: a standalone job. Several: every node runs this same command, and
    the torchrun agents meet at ``rdzv_endpoint`` (``host:port``; the agent on
    that host serves the c10d store) under the job id ``rdzv_id``, then rank
    their processes ``0 .. nodes * nproc - 1``.
    """
    if nodes <= 1:
        job = ["--standalone", f"--nproc_per_node={nproc}"]
    elif rdzv_endpoint == "none":
        raise ValueError(f"runtime.rdzv_endpoint: host:port where the {nodes} nodes meet is needed for "
                         f"runtime.nodes > 1")
    else:
        job = [f"--nnodes={nodes}", f"--nproc_per_node={nproc}", "--rdzv_backend=c10d",
               f"--rdzv_endpoint={rdzv_endpoint}", f"--rdzv_id={rdzv_id}"]
    return [sys.executable, "-m", "torch.distributed.run", *job, *argv]


def relaunch_under_torchrun(runtime: dict[str, Any], device: torch.device) -> None:
    """Replace this process by torchrun running the same script when ``runtime.gpus > 1`` or
    ``runtime.nodes > 1``.

    Returns (doing nothing) for one process or inside torchrun already, so the
    stage script stays the one entry point of ``dvc repro`` (on one node) or of
    each node's command (on several).
    """
    gpus, nodes = int(runtime.get("gpus", 1)), int(runtime.get("nodes", 1))
    if gpus * nodes <= 1 or launched():
        return
    check_devices(device, gpus)
    env = dict(os.environ)
    # torchrun would pin every worker to 1 thread; share the cores out instead.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // gpus)))
    argv = [os.path.abspath(sys.argv[0]), *sys.argv[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    command = torchrun_command(gpus, argv, nodes, runtime.get("rdzv_endpoint", "none"),
                               runtime.get("rdzv_id", "hms"))
    os.execve(sys.executable, command, env)


def rank_device(device: torch.device, ctx: Context) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` for a CUDA job, the CPU for a CPU job."""
    if not ctx.enabled or device.type != "cuda":
        return device
    return torch.device("cuda", ctx.local_rank)


@contextmanager
def process_group(device: torch.device) -> Iterator[Context]:
    """Join the torchrun job (nccl on CUDA, gloo on the CPU) for the ``with`` block.

    Outside torchrun, or with one process, this is a plain single-process
    context. On a clean exit every rank waits for the others (rank 0 may still
    be writing files) before the group is destroyed.
    """
    if not launched() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield SINGLE
        return
    check_devices(device, int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])))  # GPUs of this node
    local_rank = int(os.environ["LOCAL_RANK"])
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield current()
        barrier()
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier(device_ids=[torch.cuda.current_device()] if dist.get_backend() == "nccl" else None)


def convert_sync_batchnorm(model: nn.Module, ctx: Context, device: torch.device) -> nn.Module:
    """BatchNorm over the global batch (SyncBatchNorm) in a multi-GPU job, in place.

    SyncBatchNorm runs on CUDA only; CPU jobs keep per-process statistics.
    The converted layers share the original parameters and buffers.
    """
    if ctx.enabled and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def wrap(module: nn.Module, ctx: Context, device: torch.device, find_unused_parameters: bool = False
         ) -> nn.Module:
    """``DistributedDataParallel(module)`` in a multi-process job; ``module`` itself otherwise.

    With SyncBatchNorm (CUDA) every rank already holds the same BatchNorm
    statistics, so buffers are not broadcast; on the CPU rank 0's are.
    """
    if not ctx.enabled:
        return module
    options: dict[str, Any] = {"find_unused_parameters": find_unused_parameters}
    if device.type == "cuda":
        options["device_ids"] = [device.index]
        # Newer torch renames the per-forward broadcast; the old name still works but warns.
        sync_key = "forward_sync_buffers" if "forward_sync_buffers" in _DDP_ARGS else "broadcast_buffers"
        options[sync_key] = False
    return nn.parallel.DistributedDataParallel(module, **options)


def global_batch_loss(losses: Sequence[torch.Tensor], denominators: Sequence[torch.Tensor],
                      ctx: Context) -> torch.Tensor:
    """``sum_k L_k * N * D_k / sum_r D_k,r``: per-rank mean losses rescaled to the global batch.

    ``losses[k]`` is a mean loss over this rank's batch with normaliser
    ``denominators[k]``; one all-reduce sums the normalisers over the ranks.
    DDP's average of the gradients is then the gradient of the global batch's
    mean loss (see the module docstring). Single process: ``sum_k L_k``.
    """
    if not ctx.enabled:
        return sum(losses, 0.0)
    local = torch.stack([d.to(torch.float64) for d in denominators])
    total_d = local.clone()
    dist.all_reduce(total_d)
    factors = (local * ctx.world_size / total_d).to(losses[0].dtype)
    return sum(loss * f for loss, f in zip(losses, factors.unbind()))


def reduce_step(loss: torch.Tensor, stop: bool, ctx: Context) -> tuple[torch.Tensor, bool]:
    """The global batch's loss (mean over ranks of the rescaled losses) and whether any rank
    was asked to stop, in one all-reduce, so every rank checks the same loss and stops at
    the same step."""
    packed = torch.stack([loss.detach().to(torch.float64),
                          torch.tensor(float(stop), dtype=torch.float64, device=loss.device)])
    dist.all_reduce(packed)
    return packed[0] / ctx.world_size, bool(packed[1].item() > 0)
