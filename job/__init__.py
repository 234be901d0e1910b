"""digit-job: train handwritten-digit generators and bulk-sample labeled digits.

Entry point: `accelerate launch -m job <command> --config <preset|file.yaml> [key=value ...]`
(or `python -m job ...` for one process). See job/cli.py for the dispatch.
"""

__version__ = "0.1.0"
