"""Command line of the course: ``python -m i0t_helpers SUBCOMMAND ...``.

Every error a user can cause (a missing or malformed file, a bad option value,
embeddings that fail validation) is printed as one ``error:`` line on standard
error with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pickle
import sys

from .commands import COMMAND_MODULES
from .download import DownloadError


def build_parser() -> argparse.ArgumentParser:
    """Return the parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="python -m i0t_helpers",
        description="Measure and close the modality gap of CLIP-style embeddings (I0T and baselines).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages to standard error")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv=None) -> int:
    """Run the command line and return the exit status."""
    parser = build_parser()
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if arguments.verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s")
    try:
        return int(arguments.func(arguments) or 0)
    except argparse.ArgumentTypeError as error:
        parser.exit(2, f"error: {error}\n")
    except pickle.UnpicklingError as error:
        # torch.load(weights_only=True) rejects checkpoints that would run code; its own message
        # suggests weights_only=False, which is exactly what must not be done with an untrusted file.
        print(f"error: a checkpoint or statistics file was rejected: {_unpickling_reason(error)}; use a file "
              f"that holds tensors only", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError, KeyError, DownloadError) as error:
        message = str(error) if not isinstance(error, KeyError) else f"missing key {error}"
        print(f"error: {_one_line(message)}", file=sys.stderr)
        return 2


def _unpickling_reason(error: Exception) -> str:
    """Return the part of a ``torch.load`` refusal that names what the file would have run, in one line."""
    marker = "WeightsUnpickler error:"
    message = str(error)
    if marker not in message:
        return "it is damaged or not a PyTorch checkpoint"
    remainder = message.split(marker, 1)[1].strip()
    detail = remainder.splitlines()[0].split(". ")[0].strip() if remainder else ""
    if detail.startswith("Unsupported global"):
        return f"loading it would run code ({detail})"
    return f"it is damaged or not a PyTorch checkpoint ({detail or 'unreadable'})"


def _one_line(message: str) -> str:
    """Join the lines of a message, so that every error is one line on standard error."""
    return " ".join(line.strip() for line in message.splitlines() if line.strip())
