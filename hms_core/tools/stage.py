"""Shared entry-point wrapper for the stage scripts: one-line errors, non-zero exit."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator

from hms_core.config import ParamsError, Tracked, load_params
from hms_core.data.dataset import DataError
from hms_core.models.transplant import TransplantError
from hms_core.train.engine import Interrupted, NonFiniteLoss

# Errors a user can fix from the message alone: print it, no traceback.
USER_ERRORS = (ParamsError, DataError, TransplantError, NonFiniteLoss, FileNotFoundError, ValueError)
# A file that names it gets a line per successful stage run: the params keys the run read.
PARAMS_READ_ENV = "HMS_PARAMS_READ"


def run_stage(name: str, main: Callable[[argparse.Namespace, dict], None],
              parser: argparse.ArgumentParser) -> None:
    """Parse arguments, load and validate params.yaml, run ``main``; map errors to exit codes.

    With the environment variable ``HMS_PARAMS_READ`` naming a file, ``main`` gets the params as
    :class:`hms_core.config.Tracked` and a run that succeeds appends ``{"argv": sys.argv, "keys":
    [the dotted keys it read]}`` to the file as a JSON line: the check that each stage's ``params:``
    in ``dvc.yaml`` lists every key it reads (``tests/test_dvc_params.py``). The validation's reads
    (every key) come before and do not count. Unset, nothing changes.
    """
    args = parser.parse_args()
    start = time.perf_counter()
    try:
        check_output_paths(args)
        params = load_params(args.params)
        record = os.environ.get(PARAMS_READ_ENV)
        if record:
            params = Tracked(params)
        main(args, params)
        if record:
            with open(record, "a") as f:  # one short write per line: processes may share the file
                f.write(json.dumps({"argv": sys.argv, "keys": sorted(params.read)}) + "\n")
        print(f"{name}: done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    except Interrupted as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        sys.exit(130)
    except USER_ERRORS as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except Exception:
        traceback.print_exc()
        sys.exit(2)


OUTPUT_ARGUMENTS = ("out", "checkpoint", "live", "predictions")


def check_output_paths(args: argparse.Namespace) -> None:
    """Stage outputs must stay inside the working directory (the repository)."""
    root = Path.cwd().resolve()
    for name in OUTPUT_ARGUMENTS:
        value = getattr(args, name, None)
        if value is not None and not Path(value).resolve().is_relative_to(root):
            raise ValueError(f"--{name} {value}: stage outputs must stay inside {root}")


def stage_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return parser


@contextmanager
def training_session(runtime: dict, live_dir: str) -> Iterator[tuple[Any, Any | None]]:
    """Process group and dvclive logger of a training stage: ``(ctx, live)``.

    With ``runtime.gpus > 1`` the stage first re-executes itself under torchrun;
    rank 0 alone gets a logger (``live`` is None elsewhere). The log folder is
    kept (a DVC ``persist`` output, like the checkpoint): ``engine.fit`` trims it
    to the step training starts from.
    """
    # Imported here: the error handling above must not pay for torch and dvclive.
    from dvclive import Live

    from hms_core.runtime.distributed import process_group, relaunch_under_torchrun
    from hms_core.train.engine import resolve_device

    device = resolve_device(runtime["device"])
    relaunch_under_torchrun(runtime, device)  # returns only when no relaunch is needed
    with process_group(device) as ctx:
        logger = Live(live_dir, resume=True, save_dvc_exp=False, dvcyaml=False) \
            if ctx.is_main else nullcontext()
        with logger as live:
            yield ctx, live
