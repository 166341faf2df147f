"""Entry point of ``python -m training``; the CLI lives in ``training.cli``."""

import sys

from training.cli import main

if __name__ == "__main__":
    sys.exit(main())
