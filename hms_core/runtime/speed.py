"""Per-step speed settings from ``params.yaml`` ``runtime``: mixed precision,
channels-last memory layout, ``torch.compile`` and cuDNN autotuning.

Mixed precision and channels-last act on CUDA only, so a CPU run gives the
same bits with or without them; ``compile`` acts wherever it is asked for.

* ``amp: bf16`` runs the forward pass and the loss under
  ``torch.autocast(dtype=bfloat16)``: convolutions and matrix products in
  bfloat16, reductions such as the cross-entropy in float32, weights and the
  optimiser in float32.
* ``amp: fp16`` does the same in float16 and multiplies the loss by a dynamic
  factor ``S`` before the backward pass (``GradScaler``): gradients are
  ``grad(S * L) / S``, and a step whose gradients overflow is skipped and ``S``
  halved, so small float16 gradients do not flush to zero.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ContextManager

import torch
from torch import nn

AMP_MODES = ("bf16", "fp16", "none")
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# cuBLAS (CUDA >= 10.2) reduces in a fixed order only with a fixed workspace; PyTorch's
# deterministic mode asks for this setting and warns (or raises) on a matmul without it.
CUBLAS_WORKSPACE_CONFIG = ":4096:8"
# Why warn_only: the training step needs CUDA kernels that have no deterministic
# implementation (backward of bilinear interpolation: logits and HMS scale changes; backward
# of adaptive average pooling: ASPP's image pooling; NLLLoss forward: the cross-entropy).
# With warn_only=False the first GPU training step would raise; with it, each such op warns
# once and CUDA training is reproducible up to their atomic-add rounding, not bit-exact.
DETERMINISTIC_WARN_ONLY = True


@dataclass(frozen=True)
class Speed:
    """The speed settings in effect on ``device`` (CUDA-only options already dropped elsewhere)."""

    device: torch.device
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False

    @classmethod
    def from_runtime(cls, runtime: dict[str, Any], device: torch.device) -> "Speed":
        """Read ``runtime.amp``, ``runtime.channels_last``, ``runtime.compile`` for ``device``."""
        amp = runtime.get("amp", "none")
        if amp not in AMP_MODES:
            raise ValueError(f"runtime.amp: expected one of {', '.join(AMP_MODES)}, got {amp!r}")
        cuda = device.type == "cuda"
        return cls(device, amp if cuda else "none", bool(runtime.get("channels_last", False)) and cuda,
                   bool(runtime.get("compile", False)))

    def autocast(self) -> ContextManager[Any]:
        """The mixed-precision region of a step (forward and loss); a no-op without ``amp``."""
        if self.amp == "none":
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_AMP_DTYPES[self.amp])

    def grad_scaler(self) -> Any | None:
        """A ``GradScaler`` for float16 (its range needs loss scaling); ``None`` otherwise."""
        if self.amp != "fp16":
            return None
        # torch.amp.GradScaler("cuda") replaces torch.cuda.amp.GradScaler (deprecated since 2.4).
        return torch.amp.GradScaler(self.device.type)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device, in the channels-last layout when asked (in place)."""
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """Copy a batch tensor to the device without blocking the host (the source is pinned on CUDA);
        4-d images go channels-last when the model is."""
        if self.channels_last and x.dim() == 4:
            return x.to(self.device, non_blocking=True, memory_format=torch.channels_last)
        return x.to(self.device, non_blocking=True)

    def maybe_compile(self, module: nn.Module) -> nn.Module:
        """``torch.compile(module)`` when ``runtime.compile``; the compiled wrapper shares the parameters."""
        return torch.compile(module) if self.compile else module


def deterministic_algorithms() -> None:
    """``torch.use_deterministic_algorithms(True, warn_only=DETERMINISTIC_WARN_ONLY)``: deterministic
    kernels wherever PyTorch has one, a warning naming each op that has none."""
    torch.use_deterministic_algorithms(True, warn_only=DETERMINISTIC_WARN_ONLY)


def configure_backends(device: torch.device, deterministic: bool) -> None:
    """The backend settings of ``runtime.deterministic`` on ``device``; call it before the
    process's first cuBLAS call (the stages call it before building the model).

    Deterministic: :func:`deterministic_algorithms` and, on CUDA,
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` unless the environment sets it already (cuBLAS reads
    it when it starts) and no cuDNN autotuning. Not deterministic, on CUDA: cuDNN autotuning
    (``cudnn.benchmark``), which times the convolution algorithms once per input shape and
    keeps the fastest; the choice can differ from run to run. Training crops have one
    shape, so it is timed once.
    """
    if deterministic:
        deterministic_algorithms()
    if device.type != "cuda":
        return
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
    torch.backends.cudnn.benchmark = not deterministic


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.cpu().state_dict()`` with channels-last tensors back in the default layout.

    The state dict object itself is kept (with its version ``_metadata``), so a
    model that never left the default layout is saved exactly as before.
    """
    state = model.cpu().state_dict()
    for key, value in state.items():
        if not value.is_contiguous():
            state[key] = value.contiguous()
    return state
