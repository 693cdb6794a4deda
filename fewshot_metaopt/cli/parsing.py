"""argparse, made to report a usage error in one line, and the options several commands share."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

PROG = "fewshot-metaopt"
USAGE_ERROR = 2


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (the usage is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(USAGE_ERROR)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_machine_options(parser: argparse.ArgumentParser) -> None:
    """Where the work runs: not part of a task, so not in task files."""
    parser.add_argument("--device", default="cpu",
                        help="torch device to run on, e.g. cpu or cuda (default: cpu; bit-exact resumption is "
                             "promised on the device and thread count a run started with)")
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help="torch intra-op threads (default: torch's choice; 1 keeps a shared machine steady)")


def add_data_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", metavar="DIR", default=None,
                        help="the data set's folder (Omniglot: the one holding images_background.zip; "
                             "miniImageNet: images/ with the split CSVs, or the learn2learn pickles); "
                             "overrides data.root")
