"""The ``hms`` command: the library's command-line tools as subcommands, in the manner of ``dvc``.

``hms predict``, ``hms export``, ``hms convert``, ``hms run PRESET ... [-- DVC_ARG ...]`` and
``hms seeds``, ``hms report``; ``hms COMMAND --help`` shows a command's arguments. ``python -m
hms_core.tools.main`` is the same command without the installed script, and every tool
still runs alone too (``python -m hms_core.tools.predict ...``).

Exit status: 0 success; 1 a failure, explained by one ``hms COMMAND: error: ...`` line on
stderr (``hms --traceback COMMAND ...`` shows the whole traceback of an unexpected one);
2 a usage error (argparse's), also ``hms`` without a command.

A command's module is imported only when that command runs (or shows its help), so
``hms --help``, ``hms seeds`` and ``hms report`` do not import torch.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Sequence

from hms_core import __version__

PROG = "hms"


@dataclass(frozen=True)
class Command:
    """A subcommand. Its module has ``DESCRIPTION``, ``add_arguments(parser)`` and
    ``run(args, prog) -> int``, or with ``own_parser`` just ``main(argv)``, which parses
    the arguments after the command itself (``--help`` included)."""

    module: str
    help: str
    own_parser: bool = False
    rest: str | None = None  # attribute of ``args`` that gets the arguments after ``--``, unparsed


COMMANDS: dict[str, Command] = {
    "predict": Command("hms_core.tools.predict",
                       "predict class ids, label ids, overlays and attention maps of images"),
    "export": Command("hms_core.tools.export", "export HMS inference at fixed scales and size to TorchScript"),
    "convert": Command("hms_core.data.convert",
                       'convert an "images/ + masks/ + class list" dataset to the Cityscapes layout'),
    "run": Command("hms_core.tools.preset", "run the pipeline with preset params (dvc exp run -S ...)",
                   rest="dvc_args"),
    # seeds.py's main(argv) parses its own arguments: its usage line names it as run alone.
    "seeds": Command("hms_core.tools.seeds", "mean ± std over seeds of the DVC experiments' metrics",
                     own_parser=True),
    "report": Command("hms_core.tools.report", "write docs/results.md (and the README's results table) "
                      "from metrics/ and docs/runs/", own_parser=True),
}


def command_index(argv: Sequence[str]) -> int | None:
    """Index of the command in ``argv``: its first word that is not an option (``hms``'s own
    options take no value)."""
    return next((i for i, a in enumerate(argv) if not a.startswith("-")), None)


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The ``hms`` parser with a subparser per command; only ``selected``'s module is imported and its
    arguments added (the others' are not needed to parse or to list them)."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Hierarchical Multi-Scale Attention semantic segmentation: the command-line tools.",
        epilog=f"'{PROG} COMMAND --help' shows the arguments of a command. Exit status: 0 success, "
               "1 failure (one error line on stderr), 2 usage error.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--traceback", action="store_true",
                        help="on an unexpected error show the whole traceback, not one line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help, add_help=not cmd.own_parser)
        if name == selected and not cmd.own_parser:
            module = importlib.import_module(cmd.module)
            p.description = module.DESCRIPTION
            module.add_arguments(p)
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """``hms [--traceback] COMMAND ARGS...``; returns the exit status (argparse exits with 2 itself)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    index = command_index(argv)
    name = argv[index] if index is not None else None
    cmd = COMMANDS.get(name) if name is not None else None
    parser = build_parser(name)
    rest: list[str] = []
    if cmd is None:
        args = parser.parse_args(argv)  # -h, --version, an unknown command: argparse exits here
    elif cmd.own_parser:
        args = parser.parse_args(argv[:index + 1])  # the rest goes to the module's main as it is
        rest = argv[index + 1:]
    elif cmd.rest is not None and "--" in argv[index:]:
        cut = argv.index("--", index)
        args = parser.parse_args(argv[:cut])
        rest = argv[cut + 1:]
    else:
        args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    prog = f"{PROG} {args.command}"
    try:
        module: ModuleType = importlib.import_module(cmd.module)
        if cmd.own_parser:
            status = module.main(rest)  # may raise SystemExit itself (2 on usage, 1 on its errors)
            return 0 if status is None else int(status)
        if cmd.rest is not None:
            setattr(args, cmd.rest, rest)
        return int(module.run(args, prog=prog))
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the one-line error the exit status promises
        if args.traceback:
            raise
        print(f"{prog}: error: {_one_line(exc)} ({PROG} --traceback {args.command} ... shows where)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
