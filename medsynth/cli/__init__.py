"""``python -m medsynth`` / ``medsynth``: the command-line interface.

A user error (bad option, bad file, unknown class) prints one line, ``medsynth: error: ...``, and
exits with status 2; no traceback. With ``--json`` the last line of stdout is one JSON object.

Each command group lives in its own module (``train``, ``models``, ``sets``, ``study``) and imports
its heavy libraries inside the command, so ``--help`` and argument errors answer without torch.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from ..errors import MedsynthError
from . import hub, models, sets, study, train
from .common import EXIT_USER_ERROR, Parser


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = Parser(
        prog="medsynth",
        description="Synthetic medical images from diffusion models, CNN classifiers trained on them, "
        "and explanations of what the classifiers see. Research use only; not a medical device.",
    )
    parser.add_argument("--version", action="version", version=f"medsynth {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for group in (train, models, sets, study, hub):  # each group registers its commands
        group.register(sub)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # which options were given (resume keeps the rest)
    warnings.showwarning = _one_line_warning
    try:
        return args.func(args)
    except MedsynthError as exc:
        print(f"medsynth: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("medsynth: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
