"""The training loop shared by per-scale training and attention fine-tuning.

Optimiser by param (SGD or AdamW), poly learning rate
``lr_t = lr * (1 - t / T) ** power``, dvclive curves, a progress bar, and a
resumable checkpoint written atomically every ``checkpoint_every`` steps and
on SIGINT/SIGTERM. Mixed precision comes from :mod:`hms_core.runtime.speed`; in a
multi-process job (:mod:`hms_core.runtime.distributed`) rank 0 alone logs and writes,
and every rank resumes from the same checkpoint and stops at the same step.
"""
from __future__ import annotations

import math
import random
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from hms_core.io import load_checkpoint, save_checkpoint, write_text
from hms_core.runtime import distributed
from hms_core.runtime.distributed import Context
from hms_core.runtime.speed import Speed, deterministic_algorithms


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or infinite loss."""


class Interrupted(RuntimeError):
    """A signal stopped training after the checkpoint was written."""


def resolve_device(name: str, key: str = "runtime.device") -> torch.device:
    """``auto`` -> the GPU when there is one, else the CPU; errors name ``key``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{key}: expected auto, cpu or cuda[:N], got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{key}: {name!r} asked for, but no CUDA device is available")
    return device


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: Any | None) -> None:
    """Backward and optimiser step, through the fp16 gradient scaler when there is one."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch from the one ``seed`` of params.yaml."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        deterministic_algorithms()  # the device's settings follow in speed.configure_backends
        torch.backends.cudnn.benchmark = False


def build_optimizer(parameters: Iterable[nn.Parameter], cfg: dict[str, Any]) -> torch.optim.Optimizer:
    parameters = list(parameters)
    if not parameters:
        raise ValueError("nothing to train: every parameter is frozen")
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(parameters, lr=cfg["lr"], momentum=cfg["momentum"],
                               weight_decay=cfg["weight_decay"])
    # fused: one kernel for all parameters (CPU and CUDA since torch 2.4), not one call per tensor op.
    return torch.optim.AdamW(parameters, lr=cfg["lr"], weight_decay=cfg["weight_decay"], fused=True)


def poly_schedule(optimizer: torch.optim.Optimizer, steps: int, power: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Poly learning rate: ``lr_t = lr * (1 - t / T) ** power``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: max(0.0, 1 - t / steps) ** power)


def rng_state() -> dict[str, Any]:
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(keys.astype(np.int64)),
             "numpy_rest": [int(pos), int(has_gauss), float(gauss)],
             "python": torch.tensor(random.getstate()[1], dtype=torch.int64)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    pos, has_gauss, gauss = state["numpy_rest"]
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate((3, tuple(int(x) for x in state["python"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def truncate_live_logs(live_dir: str | Path, step: int) -> None:
    """Drop dvclive rows logged after ``step`` (all of them at 0): the run logs them again."""
    for tsv in Path(live_dir).glob("plots/metrics/**/*.tsv"):
        lines = tsv.read_text().splitlines(keepends=True)
        kept = lines[:1] + [l for l in lines[1:] if l.strip() and int(float(l.split("\t", 1)[0])) <= step]
        if len(kept) != len(lines):
            write_text(tsv, "".join(kept))


@contextmanager
def stop_requests() -> Iterator[list[int]]:
    """Turn SIGINT/SIGTERM into a flag the loop checks after each step."""
    received: list[int] = []
    handler = lambda signum, frame: received.append(signum)
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _checked_loss(losses: list[torch.Tensor], done: int, desc: str, checkpoint: Path) -> float:
    """The last of the losses of steps ``done - len(losses) .. done - 1``, read in one host sync;
    :class:`NonFiniteLoss` naming the first step whose loss is NaN or infinite."""
    values = torch.stack([l.float() for l in losses]).cpu()
    bad = (~torch.isfinite(values)).nonzero()
    if len(bad):
        first = int(bad[0])
        raise NonFiniteLoss(f"{desc}: loss is {values[first].item()} at step {done - len(losses) + first}; "
                            f"the last good checkpoint ({checkpoint}) is kept")
    return float(values[-1])


def fit(model: nn.Module, loss_fn: Callable[[Any], torch.Tensor],
        batches: Callable[[int], Iterator[Any]], cfg: dict[str, Any], checkpoint: str | Path,
        run_id: dict[str, Any], live: Any | None = None, desc: str = "train",
        speed: Speed | None = None, ctx: Context | None = None) -> dict[str, float]:
    """Train ``model``'s trainable parameters for ``cfg['steps']`` steps.

    ``batches(start)`` yields the batches of steps ``start, start + 1, ...``;
    ``loss_fn(batch)`` returns the loss (run under ``speed``'s autocast). ``checkpoint``
    is resumed when its ``run_id`` equals this run's (same params), else training
    starts afresh. In a multi-process job (``ctx``) ``loss_fn`` returns this rank's
    share of the global batch's loss (:func:`hms_core.runtime.distributed.global_batch_loss`).
    """
    speed = speed or Speed(torch.device("cpu"))
    ctx = ctx or distributed.current()
    live = live if ctx.is_main else None
    steps, checkpoint = cfg["steps"], Path(checkpoint)
    optimizer = build_optimizer((p for p in model.parameters() if p.requires_grad), cfg)
    scheduler = poly_schedule(optimizer, steps, cfg["poly_power"])
    scaler = speed.grad_scaler()
    start = 0
    if checkpoint.is_file():
        state = load_checkpoint(checkpoint)
        if state.get("run_id") == run_id:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if scaler is not None and "scaler" in state:
                scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"])
            start = int(state["step"])
            if ctx.is_main:
                print(f"{desc}: resuming from {checkpoint} at step {start}/{steps}", file=sys.stderr)
        elif ctx.is_main:
            print(f"{desc}: {checkpoint} is from other params, code, data or weights; starting afresh", file=sys.stderr)
    if live is not None:
        # The log folder persists across reruns like the checkpoint: keep the rows of the
        # steps the checkpoint covers, drop those a resumed (or fresh) run logs again.
        truncate_live_logs(live.dir, start)
    # Every rank has read the checkpoint before rank 0 may overwrite it.
    distributed.barrier()

    def save(step: int) -> None:
        if not ctx.is_main:
            return
        state = {"run_id": run_id, "step": step, "model": model.state_dict(),
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()}
        if scaler is not None:  # the loss scale a resumed fp16 run continues from
            state["scaler"] = scaler.state_dict()
        save_checkpoint(checkpoint, state)

    model.train()
    last_loss, step = float("nan"), start
    unchecked: list[torch.Tensor] = []  # losses still on the device, checked at the next log or save
    with stop_requests() as stop, tqdm(total=steps, initial=start, desc=desc, unit="step",
                                       dynamic_ncols=True, disable=not ctx.is_main) as bar:
        for step, batch in zip(range(start, steps), batches(start)):
            with speed.autocast():
                loss = loss_fn(batch)
            # All ranks agree on the loss they check and on a stop request (one all-reduce).
            shown, stopping = distributed.reduce_step(loss, bool(stop), ctx) if ctx.enabled \
                else (loss, bool(stop))
            unchecked.append(shown.detach())
            optimizer_step(loss, optimizer, scaler)
            scheduler.step()
            bar.update(1)
            done = step + 1
            logging = done % cfg["log_every"] == 0 or done == steps
            saving = done % cfg["checkpoint_every"] == 0 or done == steps or stopping
            if logging or saving:
                # The only host sync of a step: every log_every steps and before every save, so
                # a checkpoint is never written after a non-finite loss.
                last_loss = _checked_loss(unchecked, done, desc, checkpoint)
                unchecked = []
                bar.set_postfix(loss=f"{last_loss:.3f}")
            if live is not None and logging:
                live.step = done
                live.log_metric("loss", last_loss)
                live.log_metric("lr", scheduler.get_last_lr()[0])
            if saving:
                save(done)
            if stopping:
                distributed.barrier()  # rank 0's checkpoint is complete before any rank exits
                signum = stop[0] if stop else "on another rank"
                raise Interrupted(f"{desc}: stopped by signal {signum} at step {done}; "
                                  f"checkpoint {checkpoint} written, rerun to resume")
    if math.isnan(last_loss) and start < steps:
        raise RuntimeError(f"{desc}: the data ran out before step {step}")
    return {"final_loss": last_loss, "steps": steps}
