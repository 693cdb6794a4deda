"""The ``fewshot-metaopt`` entry point: parse, dispatch, and turn every failure into one line.

Exit status: 0 on success, 1 when a command fails (bad task file, missing data, damaged
checkpoint, diverged training...), 2 for a command line argparse rejects, 130 when
interrupted. A task's problems are all reported at once, one line each. ``--debug`` (before
or after the command) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import torch

from ..runs.errors import RunError, TaskErrors
from ..runs.provenance import package_version
from . import (episodes_command, evaluate_command, inspect_lr_command, plot_command, tasks_command, train_command,
               tune_command)
from .parsing import PROG, OneLineParser

FAILED = 1
INTERRUPTED = 130
COMMANDS = (train_command, evaluate_command, inspect_lr_command, plot_command, tasks_command, tune_command,
            episodes_command)
# Failures whose message already says what is wrong; anything else is reported with its type.
EXPECTED = (RunError, ValueError, OSError, FloatingPointError)


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog=PROG,
        description="Meta-learning for few-shot benchmarks: train task files, evaluate runs, "
                    "inspect learned inner learning rates, plot learning curves, search hyperparameters.",
        epilog=f"'{PROG} COMMAND --help' describes each command; docs/cli.md describes task files and run directories.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    parser.add_argument("--debug", action="store_true", help="on failure, show the full traceback")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True, parser_class=OneLineParser)
    for command in COMMANDS:
        command.add_parser(commands)
    for subparser in commands.choices.values():
        # Also after the command (``train x.toml --debug``), where it is natural to add when
        # rerunning; SUPPRESS keeps a --debug given before the command from being reset.
        subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                               help="on failure, show the full traceback")
    return parser


def one_line(err: BaseException) -> str:
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    if isinstance(err, torch.cuda.OutOfMemoryError):
        # torch's message runs to a paragraph of allocator statistics; its first two sentences
        # say what failed ("CUDA out of memory. Tried to allocate 2.00 GiB").
        what = ". ".join(text.split(". ")[:2]).rstrip(".")
        return (f"the GPU ran out of memory ({what}); start the run with a smaller train.meta_batch (or "
                "learner.vmap_chunk_size when learner.vmap_tasks is on), or use a GPU with more free memory")
    if isinstance(err, EXPECTED):
        return text or type(err).__name__
    return f"unexpected {type(err).__name__}: {text} (rerun with --debug for the traceback)"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        return args.run(args, [PROG, *argv])
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"{PROG}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as err:
        if args.debug:
            raise
        # Every problem of a task at once, one line each, so that all are fixed in one round.
        for line in err.problems if isinstance(err, TaskErrors) else [one_line(err)]:
            print(f"{PROG}: error: {line}", file=sys.stderr)
        return FAILED
