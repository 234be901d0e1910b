"""Command line: `python -m job <command> --config <preset|file.yaml> [key=value ...]`.

    accelerate launch -m job train --config quickstart run.dir=runs/quickstart
    python -m job train --config debug train.steps=10
    accelerate launch -m job sample generator=runs/quickstart/generator.safetensors count=60000 out=/data/synth
    python -m job evaluate generator=runs/quickstart/generator.safetensors [n=10000]
    python -m job transform generator=runs/autoencoder/autoencoder.safetensors inputs=photo.jpg out=printed
    python -m job data push mnist s3://bucket/datasets/mnist   # data.root=... to read elsewhere
    python -m job presets            # list the shipped presets

Exit codes: 0 done; 2 bad input (one line on stderr saying what and how to fix it,
nothing written); 3 storage unreachable (one line naming the endpoint); 4 GPUs required
(DIGITS_REQUIRE_GPU=1) but none usable; 5 another process of a multi-process job went away;
6 the local file system refused a write (full disk, read-only, permission, name too long, a
file where a folder is needed: one line naming the path and the cause; rerun once fixed);
143 (130) stopped by SIGTERM (SIGINT) after saving a checkpoint, resumable; anything else is
a fault and keeps its traceback. With DIGITS_EXIT_DIR set, each process also writes its code
to DIGITS_EXIT_DIR/rank-<LOCAL_RANK>: launchers report 1 for any failure, and the container
entrypoint reads these to pass the job's own code on to Kubernetes.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from job.core import console
from job.core.errors import BadInput, JobError, write_failed
from job.core.kinds import KINDS, help_text
from job.core.preemption import Preempted

COMMANDS = {
    "train": "train a model: " + ", ".join(KINDS) + " (model.kind=...)",
    "sample": "bulk-generate labeled digits into shards: sample generator=<URI> count=N out=<URI>",
    "evaluate": "score a generator or shard set: evaluate generator=<URI> | samples=<URI> [n=10000]",
    "transform": "handwritten digit images -> printed digits: transform generator=<autoencoder> inputs=<URI> out=<URI>",
    "data": "stage a dataset into a folder or s3:// prefix: data push mnist s3://bucket/datasets/mnist",
}


# The module whose `main(cfg, *positionals)` runs each command: the data flow starts there.
MAINS = {"train": "job.training.train", "sample": "job.sampling.sample", "evaluate": "job.evaluation.evaluate",
         "transform": "job.sampling.transform", "data": "job.data.push"}
POSITIONALS = {"data": ("action", "dataset", "dest")}

EXAMPLES = {"train": "train.steps=100", "sample": "count=60000", "evaluate": "n=10000", "transform": "out=printed",
            "data": "data.root=/data"}


def _program() -> str:
    """How the job was called, for help and errors: `digit-job` (the console script) or
    `python -m job`."""
    return "digit-job" if os.path.basename(sys.argv[0] or "") == "digit-job" else "python -m job"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"digit-job {version('digit-job')}"
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "digit-job (not installed)"


def _keys_help(command: str) -> str:
    """Every key of `command`: type, default and the comment written beside it in job/core/config.py."""
    import textwrap

    from job.core import config

    lines = [f"keys (key=value; from job/core/config.py){' and the model kinds above' if command == 'train' else ''}:"]
    for key, type_name, default, comment in config.key_docs(command):
        lines.append(f"  {key} ({type_name}; default {default})")
        if comment:
            lines += textwrap.wrap(comment, width=100, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


class _OneLineParser(argparse.ArgumentParser):
    """argparse's complaints as the job's: one line, exit 2 (not a usage block)."""

    def error(self, message: str):
        raise BadInput(f"{message} (see `{self.prog} --help`)")


def _parser() -> argparse.ArgumentParser:
    p = _OneLineParser(
        prog=_program(),
        description="Train handwritten-digit generators and bulk-sample labeled digits.",
        epilog="Launch with `accelerate launch -m job ...` for several processes or GPUs.",
    )
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", metavar="command")
    for name, text in COMMANDS.items():
        epilog = (help_text() + "\n\n" if name == "train" else "") + _keys_help(name)
        c = sub.add_parser(name, help=text, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == "data":
            c.add_argument("action", choices=["push"], help="push: copy the dataset files and a sha256 manifest")
            c.add_argument("dataset",
                           help="dataset name: mnist, fashion-mnist, kmnist, emnist-digits, usps, svhn, imagefolder")
            c.add_argument("dest", help="destination folder or s3://bucket/prefix")
        c.add_argument("--config", default=None, help="preset name (see `presets`) or path to a YAML file")
        c.add_argument("--print-config", action="store_true",
                       help="print the resolved config and exit (required keys not yet set are marked)")
        c.add_argument("overrides", nargs="*", metavar="key=value",
                       help=f"config overrides, e.g. {EXAMPLES[name]} (every key: below)")
    sub.add_parser("presets", help="list the config presets shipped with the package")
    return p


def _run(argv: list[str]) -> int:
    parser = _parser()
    try:
        # key=value after an option (`data push mnist dest --print-config data.root=x`) is
        # left over by argparse once the positionals are filled: it is an override too.
        args, extra = parser.parse_known_args(argv)
    except SystemExit as e:  # --help
        return 0 if e.code == 0 else 2
    unknown = [a for a in extra if a.startswith("-") or "=" not in a]
    if unknown or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.overrides += extra
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.command == "presets":
        from job.core.config import preset_names

        print("\n".join(preset_names()))
        return 0

    from job.core import config

    console.set_command(args.command)
    cfg = config.load(args.command, args.config, args.overrides, complete=not args.print_config)
    if args.print_config:
        missing = config.missing_required(args.command, cfg)
        if missing:
            print(f"# required, not set yet: {', '.join(k.replace('|', ' or ') for k in missing)}")
        print(config.to_yaml(cfg), end="")
        return 0
    module = importlib.import_module(MAINS[args.command])  # only the command that runs is imported
    return module.main(cfg, *(getattr(args, name) for name in POSITIONALS.get(args.command, ())))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    code = 1  # an exception that escapes below is a fault
    try:
        code = _main(argv)
        return code
    finally:
        _record_exit_code(code)


def _main(argv: list[str]) -> int:
    try:
        return _run(argv)
    except Preempted as e:  # not an error: the run saved its work and can be resumed
        print("stopped: " + " ".join(str(e).split()), file=sys.stderr, flush=True)
        return e.exit_code
    except JobError as e:
        return _one_line(e)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # a write the job does not make through storage (a cache, a temp file)
        failed = write_failed(e)
        if failed is None:
            raise
        return _one_line(failed)
    except Exception as e:
        if "torch.distributed" in sys.modules:  # only then can a peer have gone away
            from job.core.runtime import peer_lost

            lost = peer_lost(e)
            if lost is not None:
                return _one_line(lost)
        raise


def _one_line(e: JobError) -> int:
    # One line, always: wrapped library messages can carry newlines.
    print("error: " + " ".join(str(e).split()), file=sys.stderr, flush=True)
    return e.exit_code


def _record_exit_code(code: int) -> None:
    folder = os.environ.get("DIGITS_EXIT_DIR")
    if not folder:
        return
    try:
        with open(os.path.join(folder, f"rank-{os.environ.get('LOCAL_RANK', '0')}"), "w") as f:
            f.write(f"{code}\n")
    except OSError:
        pass  # the entrypoint then reports the launcher's own code
