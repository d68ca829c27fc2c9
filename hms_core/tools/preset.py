"""Run the pipeline with a named set of params (presets/*.yaml) as one experiment: dvc exp run -S ...

``hms run presets/camvid.yaml``.

Several presets apply in order, a later one winning where both set a key
(``presets/cityscapes_gpu.yaml presets/synthetic_1024x2048.yaml``).

A preset is a YAML file shaped like ``params.yaml`` holding only the keys it
changes. Each leaf becomes one ``-S key=value`` of ``dvc exp run``, so the run
is an ordinary DVC experiment (``dvc exp show``, ``dvc exp apply``) and
``params.yaml`` keeps its defaults with ``--queue``. Extra arguments after
``--`` go to ``dvc exp run`` as they are (``-- -S seed=1 --name camvid-s1``).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

from hms_core.config import ParamsError, load_params, validate
from hms_core.io import read_yaml
from hms_core.tools.report import flatten, format_value, merged


def set_arguments(preset: dict[str, Any]) -> list[str]:
    """``-S key=value`` pairs for ``dvc exp run``, a pair per leaf of :func:`flatten`; values as YAML flow
    (JSON) so lists keep their shape."""
    return [arg for key, value in flatten(preset).items()
            for arg in ("-S", f"{key}={format_value(value, compact=False)}")]


def read_preset(path: str | Path) -> dict[str, Any]:
    """The mapping of params a preset file changes; a clear error when it is missing or not one."""
    preset = read_yaml(Path(path), ParamsError) if Path(path).is_file() else None
    if not isinstance(preset, dict) or not preset:
        raise ParamsError(f"{path}: expected a YAML mapping of params to change")
    return preset


DESCRIPTION = __doc__.split("\n\n")[0]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``hms run``. What follows ``--`` is not one: ``hms`` splits it off first into
    ``args.dvc_args``, as the preset list is variadic too and argparse alone cannot tell the two apart."""
    p.usage = "%(prog)s [-h] [--queue] [--dry-run] preset [preset ...] [-- DVC_ARG ...]"
    p.epilog = "Arguments after -- go to dvc exp run as they are, e.g. -- -S seed=1 --name camvid-s1."
    p.add_argument("presets", nargs="+", metavar="preset", help="YAML file(s) with the params to change, applied in order")
    p.add_argument("--queue", action="store_true", help="queue the experiment (dvc queue start runs it)")
    p.add_argument("--dry-run", action="store_true", help="print the dvc command, run nothing")


def run(args: argparse.Namespace, prog: str = "hms run") -> int:
    """Validate ``params.yaml`` with the presets applied, then run ``dvc exp run -S ...``.

    Returns 0, or 1 when ``dvc exp run`` fails (its own status in the message); a bad preset raises.
    """
    preset: dict[str, Any] = {}
    for path in args.presets:
        preset = merged(preset, read_preset(path))
    validate(merged(load_params(), preset))  # a bad preset fails here, before DVC runs anything
    cmd = [sys.executable, "-m", "dvc", "exp", "run", *(["--queue"] if args.queue else []),
           *set_arguments(preset), *args.dvc_args]
    print(" ".join(cmd[1:]), file=sys.stderr)
    if args.dry_run:
        return 0
    status = subprocess.call(cmd)
    if status != 0:
        print(f"{prog}: error: dvc exp run failed (exit status {status})", file=sys.stderr)
        return 1
    return 0

