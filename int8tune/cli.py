"""Command line: parse once into typed configs, echo them, run, print. The only module that prints.

main.py passes in the user's files: `prepare_image` from test_utils.py and the metric registrations from
evaluation_utils.py (imported there, so they are registered before any command runs).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from . import __version__
from .errors import Int8TuneError
from .log import logger

PrepareImage = Callable


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--proto", type=Path, required=True, help="fp32 deploy prototxt")
    p.add_argument("--model", type=Path, required=True, help="fp32 caffemodel")


def _add_data_args(p: argparse.ArgumentParser, default_limit: int | None = None) -> None:
    p.add_argument("--data_list", type=Path, required=True,
                   help="a folder of images, a file listing image paths, or a labelled list (`path label` or "
                        "`path,label,`)")
    p.add_argument("--dataset_path", type=Path, default=None,
                   help="folder that relative paths in --data_list are resolved against (default: the list's folder)")
    p.add_argument("--data_limit", type=int, default=default_limit,
                   help=f"use only the first N images (default: {default_limit or 'all'})")
    p.add_argument("--image_params", type=Path, default=Path("image_params.json"),
                   help="preprocessing parameters for prepare_image in test_utils.py (default: image_params.json)")
    p.add_argument("--batch_size", type=int, default=1, help="images per forward pass (default: 1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="int8tune", description="Calibrate, measure and tune int8 Caffe models against their fp32 original.")
    parser.add_argument("--version", action="version", version=f"int8tune {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser(
        "check", help="run the fp32 model here and in OpenCV's Caffe importer; report per-blob differences",
        description="Prove the fp32 conversion: runs the model through int8tune (ONNX + onnxruntime) and OpenCV's "
                    "Caffe importer on the same preprocessed images, and prints per output blob and per layer the "
                    "largest absolute and relative difference. Exit status 1 when any blob is above --tolerance.")
    _add_model_args(check)
    _add_data_args(check, default_limit=5)
    check.add_argument("--tolerance", type=float, default=1e-4,
                       help="largest allowed max|ours - opencv| / max|opencv| per blob (default: 1e-4)")
    check.add_argument("--json", dest="json_path", type=Path, default=None, help="also write the report as JSON")
    return parser


def run(argv: Sequence[str], prepare_image: PrepareImage) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    try:
        if args.command == "check":
            from .commands.check import run_check, check_config_from_args

            return run_check(check_config_from_args(args), prepare_image)
        parser.error(f"unknown command {args.command}")
    except Int8TuneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(message)s", "%H:%M:%S"))
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
