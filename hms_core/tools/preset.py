"""Run the pipeline with a named set of params: ``python -m hms_core.tools.preset presets/camvid.yaml``.

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
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from hms_core.config import ParamsError, load_params, validate
from hms_core.io import read_yaml


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def set_arguments(preset: dict[str, Any]) -> list[str]:
    """``-S key=value`` pairs for ``dvc exp run``; values as YAML flow (JSON) so lists keep their shape."""
    args: list[str] = []
    for key, value in flatten(preset).items():
        args += ["-S", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    return args


def merged(params: dict[str, Any], preset: dict[str, Any]) -> dict[str, Any]:
    """``params`` with the preset's leaves put in: what the experiment will run with."""
    out = json.loads(json.dumps(params))
    for key, value in flatten(preset).items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def read_preset(path: str | Path) -> dict[str, Any]:
    """The mapping of params a preset file changes; a clear error when it is missing or not one."""
    preset = read_yaml(Path(path), ParamsError) if Path(path).is_file() else None
    if not isinstance(preset, dict) or not preset:
        raise ParamsError(f"{path}: expected a YAML mapping of params to change")
    return preset


def main(argv: Sequence[str] | None = None) -> int:
    """Validate ``params.yaml`` with the preset applied, then run ``dvc exp run -S ...``."""
    p = argparse.ArgumentParser(prog="hms-preset", description=__doc__.split("\n\n")[0])
    p.add_argument("presets", nargs="+", metavar="preset", help="YAML file(s) with the params to change, applied in order")
    p.add_argument("--queue", action="store_true", help="queue the experiment (dvc queue start runs it)")
    p.add_argument("--dry-run", action="store_true", help="print the dvc command, run nothing")
    p.add_argument("dvc_args", nargs="*", help="after --: more arguments for dvc exp run")
    # Split at "--" first: the preset list is variadic too, so argparse alone cannot tell them apart.
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = p.parse_args(argv[:cut])
    args.dvc_args = argv[cut + 1:]
    try:
        preset: dict[str, Any] = {}
        for path in args.presets:
            preset = merged(preset, read_preset(path))
        validate(merged(load_params(), preset))  # a bad preset fails here, before DVC runs anything
    except (ParamsError, ValueError) as exc:
        print(f"hms-preset: error: {exc}", file=sys.stderr)
        return 1
    cmd = [sys.executable, "-m", "dvc", "exp", "run", *(["--queue"] if args.queue else []),
           *set_arguments(preset), *args.dvc_args]
    print(" ".join(cmd[1:]), file=sys.stderr)
    return 0 if args.dry_run else subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
