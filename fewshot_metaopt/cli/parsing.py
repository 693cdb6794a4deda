"""argparse, made to report a usage error in one line, and the options several commands share."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

import torch

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


DEVICES = "cpu, cuda, cuda:N (N counts from 0) or mps"


def _unavailable(text: str, device: torch.device) -> str | None:
    """Why this machine cannot run on ``device``, or None when it can."""
    if device.type == "cpu":
        return None if device.index in (None, 0) else f"{text!r}: the CPU is one device; use --device cpu"
    if device.type == "cuda":
        if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:  # ROCm runs "cuda" too
            return (f"{text!r} needs a CUDA build of torch, and this one ({torch.__version__}) has no CUDA; "
                    "use --device cpu, or install a CUDA build (README: How torch is chosen)")
        if not torch.cuda.is_available():
            return (f"{text!r}: torch sees no GPU (no driver, or CUDA_VISIBLE_DEVICES hides them); "
                    "use --device cpu, or run where a GPU is visible")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            return (f"{text!r} names GPU {device.index}, but torch sees {count} "
                    f"(cuda:0 to cuda:{count - 1}); pick one of those")
        return None
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            return f"{text!r} needs Apple's Metal (MPS) backend, which this torch or machine lacks; use --device cpu"
        return None if device.index in (None, 0) else f"{text!r}: MPS is one device; use --device mps"
    return f"{text!r} is not a device {PROG} runs on; use {DEVICES}"


def device_name(text: str) -> str:
    """``--device``: a torch device this machine has, checked before anything is built."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device; use {DEVICES}") from None
    problem = _unavailable(text, device)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def add_machine_options(parser: argparse.ArgumentParser) -> None:
    """Where the work runs: not part of a task, so not in task files."""
    parser.add_argument("--device", type=device_name, default="cpu",
                        help="torch device to run on: cpu, cuda, cuda:N or mps, checked against this machine "
                             "(default: cpu; bit-exact resumption is promised on the device and thread count a "
                             "run started with)")
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help="torch intra-op threads (default: torch's choice; 1 keeps a shared machine steady)")


def add_data_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", metavar="DIR", default=None,
                        help="the data set's folder (Omniglot: the one holding images_background.zip; "
                             "miniImageNet: images/ with the split CSVs, or the learn2learn pickles); "
                             "overrides data.root")
