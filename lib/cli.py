"""What the command-line scripts share: flag types, device choice, seeding, and one-line errors."""
from __future__ import annotations

import argparse
import importlib
import random
import sys
from typing import Callable

import numpy as np
import torch

from lib.files import UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's default once: argparse's "(default: X)", unless the help says it already or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if "default" in (action.help or "") or action.default in (None, False, argparse.SUPPRESS):
            return action.help or ""
        return super()._get_help_string(action)


def parser(doc: str) -> ArgumentParser:
    """A parser whose description is the script docstring's first line, showing defaults in --help."""
    return ArgumentParser(description=doc.splitlines()[0], formatter_class=HelpFormatter)


def _bounded(name: str, kind: type, low: float, strict: bool = False, high: float = float("inf")):
    """An argparse type named `name`: a finite number of `kind` >= low (> low when `strict`) and <= high."""
    def check(text: str):
        value = kind(text)
        if not ((value > low if strict else value >= low) and value <= high) or value == float("inf"):
            if high < float("inf"):
                raise argparse.ArgumentTypeError(f"t must be in [{low:g}, {high:g}], got {text}")
            number = "" if kind is int else "a finite number "
            raise argparse.ArgumentTypeError(f"must be {number}{'>' if strict else '>='} {low:g}, got {text}")
        return value

    check.__name__ = name  # argparse names the type in its own errors ("invalid positive_int value")
    return check


unit_float = _bounded("unit_float", float, 0.0, high=1.0)  # a t in [0, 1]
positive_int, nonnegative_int, at_least_two = (_bounded(n, int, low) for n, low in
                                               (("positive_int", 1), ("nonnegative_int", 0), ("at_least_two", 2)))
positive_float = _bounded("positive_float", float, 0.0, strict=True)
nonnegative_float = _bounded("nonnegative_float", float, 0.0)


# How --aligned matches B's units to A's (lib/align.py); the first is the default: on the quick study it removed more
# of the MSE segments' barrier than weight matching (docs/experiments.md, permutation alignment).
ALIGN_METHODS = ("activations", "weights")


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where to compute; auto uses CUDA when present (default: auto)")


def pick_device(name: str) -> torch.device:
    """Resolve --device; asking for cuda without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was given but no CUDA GPU is available; use --device cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so the same seed and flags give the same weights on CPU."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def optional(module: str, flag: str):
    """lib/<module>.py, imported where `flag` needs it (so a bare copy of the card's scripts runs without it), or a
    UserError naming the missing file."""
    try:
        return importlib.import_module(f"lib.{module}")
    except ModuleNotFoundError as e:
        if e.name != f"lib.{module}":
            raise
        raise UserError(f"{flag} needs lib/{module}.py, which this copy of the toolkit lacks; copy it into lib/") from None


def run(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run a script's main; a UserError becomes one line on stderr and exit status 2."""
    try:
        main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; finished work is kept: rerun the same command to continue (train_ae.py and fit_curve.py "
              "with --resume)", file=sys.stderr)
        sys.exit(130)
