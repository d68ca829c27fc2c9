"""The ``hms`` command: the library's command-line tools as subcommands, in the manner of ``dvc``.

``hms predict``, ``hms export``, ``hms convert``, ``hms run PRESET ... [-- DVC_ARG ...]``,
``hms seeds`` and ``hms report``; ``hms COMMAND --help`` shows a command's arguments. ``python -m
hms_core.tools.main`` is the same command without the installed script.

Exit status: 0 success; 1 a failure, explained by one ``hms COMMAND: error: ...`` line on
stderr (an error the user can fix, a ``ValueError`` or a missing file, as its message; an unexpected
one with its type and a hint: ``hms --traceback COMMAND ...`` shows the whole traceback); 2 a usage
error (argparse's), also ``hms`` without a command; 130 interrupted.

Each command's module has ``DESCRIPTION``, ``add_arguments(parser)`` and ``run(args, prog) -> int``,
and is imported only when that command runs (or shows its help), so ``hms --help``, ``hms seeds``
and ``hms report`` do not import torch.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import NamedTuple, Sequence

from hms_core import __version__

PROG = "hms"
# Errors a user can fix from the message alone (ParamsError, PredictError, ConvertError, ReportError
# are ValueErrors): their message is the line, without the traceback hint.
USER_ERRORS = (ValueError, FileNotFoundError)


class Command(NamedTuple):
    module: str
    help: str
    rest: str | None = None  # attribute of ``args`` that gets the arguments after ``--``, unparsed


COMMANDS: dict[str, Command] = {
    "predict": Command("hms_core.tools.predict",
                       "predict class ids, label ids, overlays and attention maps of images"),
    "export": Command("hms_core.tools.export", "export HMS inference at fixed scales and size to TorchScript"),
    "convert": Command("hms_core.tools.convert",
                       'convert an "images/ + masks/ + class list" dataset to the Cityscapes layout'),
    "run": Command("hms_core.tools.preset", "run the pipeline with preset params (dvc exp run -S ...)",
                   rest="dvc_args"),
    "seeds": Command("hms_core.tools.seeds", "mean ± std over seeds of the DVC experiments' metrics"),
    "report": Command("hms_core.tools.report", "write docs/results.md (and the README's results table) "
                      "from metrics/ and docs/runs/"),
}


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
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        if name == selected:
            module = importlib.import_module(cmd.module)
            p.description = module.DESCRIPTION
            module.add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``hms [--traceback] COMMAND ARGS...``; returns the exit status (argparse exits with 2 itself)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # The command: the first word that is not an option (``hms``'s own options take no value).
    name = next((a for a in argv if not a.startswith("-")), None)
    cmd = COMMANDS.get(name) if name is not None else None
    parser = build_parser(name if cmd else None)
    rest: list[str] = []
    if cmd is not None and cmd.rest is not None and "--" in argv[(start := argv.index(name)):]:
        cut = argv.index("--", start)
        argv, rest = argv[:cut], argv[cut + 1:]
    args = parser.parse_args(argv)  # -h, --version, an unknown command: argparse exits here
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    prog = f"{PROG} {args.command}"
    if cmd.rest is not None:
        setattr(args, cmd.rest, rest)
    try:
        return int(importlib.import_module(cmd.module).run(args, prog=prog))
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the one-line error the exit status promises
        if args.traceback:
            raise
        text = " ".join(str(exc).split())
        if not isinstance(exc, USER_ERRORS):   # unexpected: its type, and where to see the traceback
            kind = f"{type(exc).__name__}: " if text else type(exc).__name__
            text = f"{kind}{text} ({PROG} --traceback {args.command} ... shows where)"
        print(f"{prog}: error: {text}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
