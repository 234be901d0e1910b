"""Command line: `python -m job <command> --config <preset|file.yaml> [key=value ...]`.

    accelerate launch -m job train --config quickstart run.dir=runs/quickstart
    python -m job train --config debug train.steps=10
    python -m job presets            # list the shipped presets

Exit codes: 0 done; 2 bad input (one line on stderr saying what and how to fix it,
nothing written); anything else is a fault and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys

from job.errors import BadInput

COMMANDS = {
    "train": "train a model (dcgan, conditional or not)",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m job",
        description="Train handwritten-digit generators and bulk-sample labeled digits.",
        epilog="Launch with `accelerate launch -m job ...` for several processes or GPUs.",
    )
    sub = p.add_subparsers(dest="command", metavar="command")
    for name, help_text in COMMANDS.items():
        c = sub.add_parser(name, help=help_text)
        c.add_argument("--config", default=None, help="preset name (see `presets`) or path to a YAML file")
        c.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
        c.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.steps=100")
    sub.add_parser("presets", help="list the config presets shipped with the package")
    return p


def _run(argv: list[str]) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed its usage line
        return 0 if e.code == 0 else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.command == "presets":
        from job.config import preset_names

        print("\n".join(preset_names()))
        return 0

    from job import config

    cfg = config.load(args.command, args.config, args.overrides)
    if args.print_config:
        print(config.to_yaml(cfg), end="")
        return 0
    if args.command == "train":
        from job import train

        return train.main(cfg)
    raise AssertionError(f"unhandled command {args.command}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return _run(argv)
    except BadInput as e:
        # One line, always: wrapped library messages can carry newlines.
        print("error: " + " ".join(str(e).split()), file=sys.stderr, flush=True)
        return BadInput.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
