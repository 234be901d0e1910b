"""`python -m job ...` and `accelerate launch -m job ...` both start here."""

from job.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
