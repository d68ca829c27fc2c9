"""What a training checkpoint must match to be resumed: the run's params and a fingerprint of
its inputs (the library's code, the training data, the starting weights).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from torch import nn

from hms_core.data.dataset import read_index
from hms_core.runtime.distributed import Context


def inputs_fingerprint(prepared: str | Path, start: nn.Module | None = None) -> str:
    """SHA-256 over the library's code, the training data (prepared index, labels' and
    images' sizes and modification times) and the weights training starts from.

    A checkpoint resumes only a run with the same fingerprint: after a change of code
    or data, DVC reruns the stage and the run must start afresh, not continue (or,
    if complete, skip) training on what no longer exists.
    """
    digest = hashlib.sha256()
    # Every module of the hms_core package, not only those a stage imports.
    library = Path(__file__).resolve().parents[1]
    for path in sorted(library.rglob("*.py")):
        digest.update(path.relative_to(library).as_posix().encode() + path.read_bytes())
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


def resume_run_id(run_id: dict[str, Any], ctx: Context, prepared: str | Path, start: nn.Module | None = None
                  ) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: params, code, data, starting weights, and
    the number of processes (the global batch depends on it; the key is absent for one)."""
    run_id = {**run_id, "inputs": inputs_fingerprint(prepared, start)}
    return {**run_id, "world_size": ctx.world_size} if ctx.enabled else run_id
