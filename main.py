#!/usr/bin/env python3
"""int8tune's entry point: `python main.py COMMAND ...` (the same as the installed `int8tune` command).

It imports your two files, test_utils.py (prepare_image) and evaluation_utils.py (metrics, registered on
import), and hands them to the package.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the user's files beside this one win

import evaluation_utils  # noqa: E402,F401  (registers the metrics)
import test_utils  # noqa: E402
from int8tune.cli import run  # noqa: E402


def main(argv=None) -> int:
    return run(sys.argv[1:] if argv is None else argv, prepare_image=test_utils.prepare_image)


if __name__ == "__main__":
    sys.exit(main())
