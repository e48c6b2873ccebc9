"""What every command group shares: the one-line-error parser, numeric option types, rank checks, --resume's kept options."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..errors import MedsynthError

EXIT_USER_ERROR = 2


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that points at --help."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def is_main_process() -> bool:
    """Under `accelerate launch` every rank runs the command; only rank 0 prints results."""
    return int(os.environ.get("RANK", "0")) == 0


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def keep_recorded_options(args, recipe_cls, options: dict) -> dict:
    """--resume continues the recorded recipe: an option left off the command line keeps the value the run
    recorded in OUT/args.json (e.g. --save-dtype fp16), not the parser's default; a given option wins."""
    from ..recipes import keep_recorded

    saved_file = Path(args.out) / "args.json"
    if not saved_file.is_file():
        return options
    try:
        saved = json.loads(saved_file.read_text())
    except ValueError as exc:
        raise MedsynthError(f"{saved_file} is not valid JSON ({exc}); it records the run's recipe") from None
    given = {token.split("=", 1)[0] for token in getattr(args, "argv", []) if token.startswith("--") and len(token) > 2}
    options, kept = keep_recorded(recipe_cls, options, saved, given)
    if kept and is_main_process():
        print(f"resuming with the recorded {', '.join(kept)} (give an option to change it)", file=sys.stderr)
    return options


def report(args, result: dict, line: str) -> int:
    print(json.dumps(result) if args.json else line)
    return 0


def csv_of(kind, what: str):
    """An argparse type: comma-separated values of ``kind``."""
    def parse(text: str):
        try:
            values = tuple(kind(v.strip()) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got nothing")
        return values
    return parse
