#!/usr/bin/env python3
"""Fetch the default example (int8tune/example.py): `python scripts/fetch_example.py [--cache DIR]`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from int8tune.example import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
