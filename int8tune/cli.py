"""Command line: parse once into typed configs, echo them, run, print. The only module that prints.

main.py passes in the user's files: `prepare_image` from test_utils.py and the metric registrations from
evaluation_utils.py (imported there, so they are registered before any command runs).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from . import __version__
from .config import Confirm, DeliveryConfig, Objective, RestartPick
from .errors import Int8TuneError
from .log import logger
from .progress import ProgressMode
from .quant.rounding_solver import Solver

PrepareImage = Callable


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--proto", type=Path, required=True, help="fp32 deploy prototxt")
    p.add_argument("--model", type=Path, required=True, help="fp32 caffemodel")
    p.add_argument("--input_shape", default=None, metavar="N,C,H,W",
                   help="run a fully convolutional net (e.g. MTCNN PNet) at this input shape instead of the "
                        "prototxt's; refused, naming the layer, when a layer's weights depend on the input size")


def _add_data_args(p: argparse.ArgumentParser, default_limit: int | None = None) -> None:
    p.add_argument("--data_list", "--dataset_file", dest="data_list", type=Path, required=True,
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
    check.add_argument("--output_path", type=Path, default=None,
                       help="folder for report.log and report.html (the per-blob table, sortable)")

    cal = sub.add_parser(
        "calibrate", help="collect statistics, choose thresholds, write the int8 model (table + int8 prototxt)",
        description="The preparation step: streams the images twice (absmax, then |x| histograms), computes every "
                    "calibrator's threshold per blob, picks one (--method; auto measures each on the network), "
                    "and writes the calibration table in every format, the int8 prototxt, the QDQ ONNX model, "
                    "statistics.csv and report.log under --output_path.")
    _add_model_args(cal)
    _add_data_args(cal)
    _add_quant_args(cal)
    _add_lever_args(cal)
    cal.add_argument("--output_path", type=Path, required=True, help="folder for every output")
    cal.add_argument("--config", help="YAML file of settings (option_name: value); command-line options win")
    cal.add_argument("--simplified", action="store_true",
                     help="OpenVINO's simplified mode: statistics and a min-max table, no difference check")
    cal.add_argument("--measure_images", type=int, default=32,
                     help="images used by --method auto and the difference check (default 32)")
    cal.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: all cores)")
    _add_executor_args(cal)

    export = sub.add_parser("export", help="write the fp32 model as ONNX (what the tool measures int8 against)",
                            description="Converts the Caffe model to ONNX as the tool runs it: BatchNorm/Scale folded "
                                        "into the convolutions (fp32 outputs unchanged), --equalize applied when "
                                        "given. Nets ending in DetectionOutput end at the tensors it reads (the "
                                        "tool computes DetectionOutput outside onnxruntime).")
    _add_model_args(export)
    export.add_argument("--output", type=Path, required=True, help="the .onnx file to write")
    export.add_argument("--equalize", action="store_true", help="cross-layer equalization first (fp32 unchanged)")

    test = sub.add_parser("test", help="report the fp32-vs-int8 difference of one layer or of the whole model",
                          description="test.sh: with --int8_layer NAME, the difference of that layer's output (all "
                                      "upstream layers int8 as the table says); without, the model difference under "
                                      "--metric and every int8 layer's own difference, worst first. Writes "
                                      "<output_path>/report.log.")
    _add_tuning_args(test, search=False)
    test.add_argument("--int8_layer", default="", help="the layer whose output difference to report (default: all)")

    tune = sub.add_parser("tune", help="sweep one layer's threshold and write every candidate int8 model",
                          description="tune.sh: moves the threshold of --tune_layer's input blob up and down, writes "
                                      "each candidate (calibration_table.pb + int8.prototxt) under --output_path, "
                                      "names the best, and reports each candidate's difference next to --tune_diff.")
    _add_tuning_args(tune)
    tune.add_argument("--tune_layer", required=True, help="int8 layer whose input threshold is swept")
    tune.add_argument("--tune_diff", type=float, default=None,
                      help="the difference before tuning, to compare candidates with (measured when omitted)")

    auto = sub.add_parser("auto", help="the whole loop (main.sh): calibrate if needed, tune every layer, write all",
                          description="main.sh: calibrates first when no table is given, measures, tunes every int8 "
                                      "blob in network order (each starting from the best table so far) and writes "
                                      "the tuned model in every format, report.log, layers.csv, trials.jsonl and "
                                      "plots under --output_path. Interrupted, it keeps the best table so far; run "
                                      "again with the same inputs, it resumes from trials.jsonl.")
    _add_tuning_args(auto)
    _add_lever_args(auto)
    auto.add_argument("--no_resume", dest="resume", action="store_false",
                      help="start afresh even if --output_path holds a trial log of the same inputs")
    auto.add_argument("--plots", type=int, default=6, help="histogram plots for this many worst layers (default 6)")
    auto.add_argument("--restarts", type=int, default=DeliveryConfig.restarts,
                      help=f"layerwise: tune the whole net this many times, each from the table moved by a relative "
                           f"1e-6 (another rounding realization), and keep the restart with the best objective; a "
                           f"single run's result is one draw of a wide spread (default {DeliveryConfig.restarts}; 1: "
                           f"one plain run)")
    auto.add_argument("--restart_pick", default=DeliveryConfig.restart_pick.value,
                      choices=[p.value for p in RestartPick],
                      help="best: the restart with the best objective on the tuning images (default); mean: the "
                           "geometric mean of the restarts' threshold moves (a table no restart tested); "
                           "validation: the restart with the best --metric on the --validation_list images")
    auto.add_argument("--holdout", type=float, default=DeliveryConfig.holdout,
                      help=f"without --validation_list: hold this share of the images back from calibration and "
                           f"tuning, and deliver the table they score best (start, tuned, each restart, each "
                           f"calibrator's table) when it beats the start by more than the noise floor (default "
                           f"{DeliveryConfig.holdout}; under 20 images: two folds, the tuned table only when both "
                           f"show its gain; 0: tune on every image and deliver the tuned table)")
    auto.add_argument("--validation_list", type=Path, default=None,
                      help="images held out of tuning (a list file or a folder, read like --data_list): report.log "
                           "scores the start table, the tuned one and each restart on them (--metric, and the "
                           "detection agreement for a YOLO metric) and validation.csv holds each image's difference")
    acc = auto.add_argument_group("accuracy-driven tuning (Glow, OpenVINO, Neural Compressor)")
    acc.add_argument("--strategy", default="layerwise", choices=["layerwise", "halving", "basic", "mse", "bayesian"],
                     help="layerwise: threshold search blob by blob on the metric (default); halving: Glow's scale "
                          "halving per node; basic: model-wise search then fp32 fallback ranked by measured impact; "
                          "mse: fp32 fallback ranked by each layer's own difference; bayesian: Gaussian-process "
                          "search over per-blob threshold multipliers")
    acc.add_argument("--bayesian_trials", type=int, default=30, help="bayesian: evaluations in all (30)")
    acc.add_argument("--tiebreak", default=None, choices=["performance", "model_size", "memory"],
                     help="among every candidate that meets the goal, keep the fastest (QDQ latency in onnxruntime), "
                          "the smallest, or the one with the lowest peak memory (default: the best score)")
    acc.add_argument("--max_iter_per_node", type=int, default=3, help="halving: divisions by 2 tried per node (3)")
    acc.add_argument("--acc_drop_skip", type=float, default=0.05,
                     help="halving: stop a node's search when accuracy drops by more than this (0.05)")
    acc.add_argument("--target_accuracy", type=float, default=None,
                     help="stop once the metric reaches this value (0..1 for accuracies)")
    acc.add_argument("--threshold", type=float, default=1.0,
                     help="largest accuracy drop allowed, in percent points (default 1): the goal of the run")
    acc.add_argument("--progress", default=ProgressMode.PRINT.value, choices=[p.value for p in ProgressMode],
                     help="progress output")
    acc.add_argument("--no_fallback", dest="fallback", action="store_false",
                     help="basic/mse: never fall a layer back to fp32")

    bench = sub.add_parser("benchmark", help="latency of the fp32 model vs its exported int8 QDQ model in onnxruntime",
                           description="Times the fp32 graph and the int8 QDQ export (default graph optimisation, "
                                       "so onnxruntime uses its int8 kernels), one session at a time, at each batch "
                                       "size, also with session.x64quantprecision=1 (onnxruntime's exact kernels on "
                                       "x86 without VNNI), prints the ratios, what onnxruntime runs in int8 and in "
                                       "float, and this CPU's int8 path. With --calibration_proto and --data_list, "
                                       "it also checks that the file computes what the simulation does here.")
    _add_model_args(bench)
    bench.add_argument("--calibration_proto", type=Path, default=None, help="table to export as QDQ")
    _add_follow_equalize_args(bench)
    bench.add_argument("--corrected_model", type=Path, default=None,
                       help="the table was calibrated with --adaround/--bias_correction: the corrected.caffemodel "
                            "written beside it")
    bench.add_argument("--qdq", type=Path, default=None, help="an already exported QDQ model")
    bench.add_argument("--batch_sizes", default="1,8", help="comma-separated batch sizes (default 1,8)")
    bench.add_argument("--repeat", type=int, default=30, help="timed runs per measurement (default 30)")
    bench.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: all cores)")
    bench.add_argument("--json", dest="json_path", type=Path, default=None, help="also write the figures as JSON")
    bench.add_argument("--output_path", type=Path, default=None, help="folder for report.log and report.html")
    bench.add_argument("--data_list", default=None,
                       help="images for the deployed-vs-simulated check (with --calibration_proto)")
    bench.add_argument("--image_params", type=Path, default=None, help="preprocessing of --data_list images")
    bench.add_argument("--data_limit", type=int, default=8, help="images of --data_list checked (default 8)")
    return parser


def _add_tuning_args(p: argparse.ArgumentParser, search: bool = True) -> None:
    """The options of test, tune and auto; test (search False) measures a given table: no search, no calibration."""
    from .metrics import METRICS

    p.add_argument("--config", help="YAML file of settings (option_name: value); command-line options win")
    _add_model_args(p)
    p.add_argument("--calibration_model", type=Path, default=None,
                   help="int8 prototxt to tune (int8.prototxt written by calibrate)")
    p.add_argument("--calibration_proto", type=Path, default=None,
                   help="calibration table .pb/.pbtxt (written by calibrate); with --calibration_model they must agree")
    p.add_argument("--corrected_model", type=Path, default=None,
                   help="the corrected.caffemodel written by --adaround/--bias_correction with the table: the int8 "
                        "model quantizes its weights and is measured against --model (the fp32 original)")
    p.add_argument("--output_path", type=Path, required=True, help="folder for every output")
    _add_data_args(p)
    p.add_argument("--metric", "--metric_name", "--metric_type", dest="metric", default="square",
                   help=f"difference metric: built in {', '.join(METRICS.names())}, or your own from "
                        f"evaluation_utils.py or --metric_module (default square)")
    p.add_argument("--metric_module", type=Path, default=None,
                   help="a Python file of your own @register_metric functions, loaded before the run")
    p.add_argument("--metric_params", default="", help="JSON object (or file) of metric parameters")
    p.add_argument("--yolo_cfg", type=Path, default=None, help="darknet .cfg giving the yolo metric's heads")
    p.add_argument("--objective", default=None, choices=[o.value for o in Objective],
                   help="what each candidate threshold is scored by: outputs = the square distance of the model's "
                        "outputs, whatever --metric (auto's default; the same as model for --metric square; dense: "
                        "every output value counts, see docs/tuning.md; --metric is still reported before/after and "
                        "picks the starting table); model = --metric on the "
                        "model's outputs (tune's default, in the units of test's model difference and --tune_diff); "
                        "layer = the tuned layer's own output (square); guarded = outputs ranks the candidates, and a "
                        "move is kept only when --metric on the model's outputs improves too")
    _add_executor_args(p)
    if not search:
        p.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: all cores)")
        _add_follow_equalize_args(p)
        return
    s = p.add_argument_group("threshold search")
    s.add_argument("--search", default="both_directions", choices=["both_directions", "grid"],
                   help="both_directions: up then down by factors of (1+step_ratio) while it improves (default); "
                        "grid: --multipliers, or steps each side of 1")
    s.add_argument("--step_ratio", type=float, default=0.1, help="relative step (default 0.1)")
    s.add_argument("--steps", type=int, default=8, help="largest number of steps each way (default 8)")
    s.add_argument("--patience", type=int, default=2,
                   help="stop a direction after this many candidates in a row without improvement (default 2)")
    s.add_argument("--multipliers", default="", help="explicit comma-separated multipliers (implies --search grid)")
    s.add_argument("--min_gain", type=float, default=0.01,
                   help="keep a new threshold only if it improves the objective on all images by more than this "
                        "fraction (default 0.01: a smaller gain on a few images is as likely noise)")
    s.add_argument("--output_veto", type=float, default=2.0,
                   help="with several model outputs and the square distance: refuse a move that lowers the sum but "
                        "multiplies one output's own distance by more than this (default 2; 0: off)")
    s.add_argument("--confirm", choices=[c.value for c in Confirm], default=Confirm.ALL.value,
                   help="with --search_subset: a move must improve the objective on the batches the search did not "
                        "see, by more than --min_gain (unseen), or on every batch (all, default)")
    s.add_argument("--search_subset", type=int, default=-1,
                   help="search each threshold on the N batches with the largest difference, then confirm on all "
                        "(default -1: half of the batches when there are at least 6; 0: always all)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: all cores)")
    _add_quant_args(p)


def _add_executor_args(p: argparse.ArgumentParser) -> None:
    from .executors import EXECUTOR_KINDS

    g = p.add_argument_group("where the batches run (docs/ray.md)")
    g.add_argument("--executor", default="local", choices=EXECUTOR_KINDS,
                   help="local: this process (default); ray: the workers of a Ray cluster, one batch per task, the "
                        "same tables and metrics bit for bit (needs pip install -e '.[ray]')")
    g.add_argument("--ray_address", default=None, metavar="HOST:PORT",
                   help="--executor ray: the cluster's head, as `ray start --head` printed it (default: "
                        "$RAY_ADDRESS, else the one `ray start` started on this machine, else one started for the "
                        "run)")


def _add_quant_args(p: argparse.ArgumentParser) -> None:
    from .quant.calibrators import ACTIVATION_CALIBRATORS, WEIGHT_CALIBRATORS
    from .quant.spec import BiasMode, Granularity, Rounding, Target

    g = p.add_argument_group("int8 model")
    g.add_argument("--method", default="auto", choices=["auto"] + ACTIVATION_CALIBRATORS.names(),
                   help="activation calibrator; auto tries every calibrator per blob and keeps the one that "
                        "disturbs the reading layers' outputs least (default)")
    g.add_argument("--weight_method", default="minmax", choices=WEIGHT_CALIBRATORS.names(),
                   help="weight calibrator (default minmax)")
    g.add_argument("--granularity", default=Granularity.MIX.value, choices=[e.value for e in Granularity],
                   help="mix: weights per output channel, activations per tensor (default, deployable); per_tensor; "
                        "per_channel: activations per channel too (TNN)")
    g.add_argument("--rounding", default=Rounding.HALF_EVEN.value, choices=[e.value for e in Rounding],
                   help="half_to_even (ONNX QuantizeLinear, onnxruntime, TensorRT; default) or "
                        "half_away_from_zero (C roundf: ncnn, TNN)")
    g.add_argument("--bias", default=BiasMode.INT32.value, choices=[e.value for e in BiasMode],
                   help="int32 at s_in*s_w (default) or fp32")
    g.add_argument("--target", default=Target.ONNXRUNTIME.value, choices=[e.value for e in Target],
                   help="where the int8 model will run; the tool simulates that engine's integer arithmetic. "
                        "onnxruntime (default): any CPU, exact on x86 with and without VNNI (weights kept out of the "
                        "int16 overflow of AVX2 kernels), uint8 after ReLU; onnxruntime_vnni: 8-bit weights "
                        "everywhere, exact only on VNNI/AMX x86 and ARM; ncnn, tensorrt: signed int8 only")
    g.add_argument("--unsigned", action="store_true",
                   help="quantize blobs that cannot be negative to [0, 255] with T/255 (implied by the onnxruntime "
                        "targets; refused with ncnn and tensorrt, which run signed activations only)")
    g.add_argument("--equalize", action="store_true", default=None,
                   help="cross-layer equalization first (DFQ, data-free): rescale the channels between each "
                        "Conv -> ReLU/PReLU -> Conv pair so both weight ranges match; fp32 unchanged, int8 loses "
                        "less on depthwise-separable nets. DEFAULT where a table is calibrated: both ways, keeping "
                        "the one closer to fp32 on the calibration images (docs/equalization.md); where a table is "
                        "given: as it records. calibrate/main.sh write equalized.caffemodel when equalized (the "
                        "corrected.caffemodel of the bias correction holds it too): deploy it with the table")
    g.add_argument("--no_equalize", dest="equalize", action="store_false",
                   help="keep the weights' channel ranges as given (no equalization, no second calibration)")
    g.add_argument("--quantize_types", default="",
                   help="comma-separated layer types quantized in addition to Convolution, Deconvolution, "
                        "InnerProduct (e.g. Pooling,Eltwise,Concat)")
    g.add_argument("--ignore_layer_names", default="", help="comma-separated layer names kept in fp32")
    g.add_argument("--ignore_layer_names_path", type=Path, default=None, help="file of layer names kept in fp32")
    g.add_argument("--ignore_layer_types", default="", help="comma-separated layer types kept in fp32")
    g.add_argument("--ignore_layer_types_path", type=Path, default=None, help="file of layer types kept in fp32")
    g.add_argument("--ignore_layer_list", default="",
                   help="layer names kept in fp32: comma-separated, or a file with one per line (seed tool's option)")
    g.add_argument("--percentile", type=float, default=99.99, help="percentile calibrator's percentile (default 99.99)")
    g.add_argument("--bins", type=int, default=2048, help="histogram bins (default 2048, as ncnn)")


def _add_follow_equalize_args(p: argparse.ArgumentParser) -> None:
    """test, tune, benchmark: the table records whether its weights were equalized; these only override it."""
    p.add_argument("--equalize", action="store_true", default=None,
                   help="equalize the caffemodel as the table was calibrated (default: as the table records)")
    p.add_argument("--no_equalize", dest="equalize", action="store_false",
                   help="run the caffemodel as given, whatever the table records (a mismatch is refused)")


def _add_lever_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("weight levers (docs/weight_levers.md)")
    g.add_argument("--adaround", action="store_true", default=None,
                   help="ON BY DEFAULT where a table is calibrated with per-channel min-max weights (--no_adaround: "
                        "off): learn each weight's rounding (up or down) per layer so that the layer's output on the "
                        "calibration images stays closest to fp32 (AdaRound), before the thresholds are calibrated; "
                        "writes corrected.caffemodel, whose weights quantize back to exactly those integers")
    g.add_argument("--no_adaround", dest="adaround", action="store_false",
                   help="round the weights to nearest (the AdaRound calibrate and main.sh apply by default off)")
    g.add_argument("--adaround_solver", choices=[s.value for s in Solver], default=None,
                   help="how --adaround chooses each weight's up or down: sequential (default: one input at a time, "
                        "the error left fed to the weights not yet rounded, as GPTQ; one pass per layer) or adam "
                        "(AdaRound's relaxation, 400 Adam steps per layer; docs/weight_levers.md compares them)")
    g.add_argument("--bias_correction", action="store_true", default=None,
                   help="ON BY DEFAULT where a table is calibrated (--no_bias_correction: off): subtract from each "
                        "int8 layer's bias the mean of its int8-minus-fp32 output per channel on the calibration "
                        "images, layer after layer from the input (after --equalize and --adaround); writes "
                        "corrected.caffemodel: deploy it with the prototxt and the table (test.sh/tune.sh find it "
                        "beside the table, or --corrected_model)")
    g.add_argument("--no_bias_correction", dest="bias_correction", action="store_false",
                   help="keep the weights as given (the bias correction calibrate and main.sh apply by default off)")


def run(argv: Sequence[str], prepare_image: PrepareImage) -> int:
    parser = build_parser()
    try:
        argv = with_config_file(list(argv), parser)
    except Int8TuneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    try:
        if getattr(args, "output_path", None) is not None:  # one run at a time per output folder
            from .outputs import output_lock

            with output_lock(args.output_path):
                return _dispatch(args, parser, prepare_image)
        return _dispatch(args, parser, prepare_image)
    except Int8TuneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # The file system said no (output path a file or under one, read-only folder, disk full): the user's
        # situation, not a bug, so one line naming the path; the traceback only with --verbose.
        logger.debug("traceback of the error below", exc_info=True)
        print(f"error: {_os_error_text(e)}", file=sys.stderr)
        return 2
    except _opencv_error() as e:
        # OpenCV's own exception (e.g. its Caffe importer in `check` refusing a net): its message is the news.
        logger.debug("traceback of the error below", exc_info=True)
        print(f"error: OpenCV failed{f' in {e.func}' if getattr(e, 'func', '') else ''}: "
              f"{(getattr(e, 'err', '') or str(e)).strip()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _dispatch(args, parser: argparse.ArgumentParser, prepare_image: PrepareImage) -> int:
    if args.command == "check":
        from .commands.check import check_config_from_args, run_check

        return run_check(check_config_from_args(args), prepare_image)
    if args.command == "calibrate":
        from .commands.calibrate import run_calibrate
        from .commands.parse import calibrate_config

        return run_calibrate(calibrate_config(args), prepare_image)
    if args.command == "export":
        from .commands.export import run_export

        return run_export(args)
    if args.command == "benchmark":
        from .commands.benchmark import run_benchmark

        return run_benchmark(args, prepare_image)
    if args.command in ("test", "tune", "auto"):
        from .commands import tuning
        from .commands.parse import tune_config

        return getattr(tuning, f"run_{args.command}")(tune_config(args), prepare_image)
    parser.error(f"unknown command {args.command}")
    return 2


def _os_error_text(e: OSError) -> str:
    """"<path>: <strerror>" (both paths of a rename); an output path that is a file gets a plainer reason."""
    reason = e.strerror or str(e)
    if isinstance(e, FileExistsError) and e.filename is not None and not Path(e.filename).is_dir():
        reason = "exists and is not a folder"
    if isinstance(e, NotADirectoryError) and e.filename is not None:
        blocking = next((p for p in Path(e.filename).parents if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            reason = f"{reason} ({blocking} is a file)"
    if e.filename is None:
        return reason
    where = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else f"{e.filename}"
    return f"{where}: {reason}"


def _opencv_error() -> type[BaseException]:
    """cv2.error, looked up only when an exception reaches that handler (importing cv2 costs ~0.2 s)."""
    try:
        import cv2
    except ImportError:  # pragma: no cover - cv2 is a pinned dependency
        return _NoSuchError
    return cv2.error


class _NoSuchError(Exception):
    """Stands in for cv2.error when OpenCV is missing: never raised."""


def with_config_file(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """`--config settings.yaml`: its keys are option names (without dashes) of the command; they act as defaults
    placed before the command line's own options, which therefore win. Unknown keys are errors naming them."""
    if "--config" not in argv:
        return argv
    from .errors import ConfigError

    i = argv.index("--config")
    if i + 1 >= len(argv):
        raise ConfigError("--config needs a YAML file")
    path = Path(argv[i + 1])
    rest = argv[:i] + argv[i + 2:]
    command = next((a for a in rest if not a.startswith("-")), None)
    sub = parser._subparsers._group_actions[0].choices.get(command) if command else None  # noqa: SLF001
    if sub is None:
        raise ConfigError("--config goes with a command (calibrate, test, tune, auto)")
    import yaml

    try:
        settings = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"--config {path}: cannot read it as YAML ({e})") from e
    if not isinstance(settings, dict):
        raise ConfigError(f"--config {path}: expected a mapping of option: value")
    options: dict[str, list[argparse.Action]] = {}
    for a in sub._actions:  # noqa: SLF001
        if a.option_strings:  # a switch with an off form (--bias_correction, --no_bias_correction): both, by dest
            options.setdefault(a.dest, []).append(a)
    extra: list[str] = []
    for key, value in settings.items():
        actions = options.get(key)
        if actions is None:
            raise ConfigError(f"--config {path}: unknown key {key!r} for `{command}`; valid keys: "
                              f"{', '.join(sorted(k for k in options if k != 'help'))}")
        switches = {isinstance(a, argparse._StoreTrueAction): a.option_strings[0] for a in actions  # noqa: SLF001
                    if isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction))}  # noqa: SLF001
        flag = actions[0].option_strings[0]
        if switches:  # the form that gives `value`; none when only the other form exists (the value is the default)
            if not isinstance(value, bool):  # `equalize: auto` must not read as true
                raise ConfigError(f"--config {path}: {key} takes true or false, found {value!r}"
                                  + (" (leave it out for the default)" if len(switches) == 2 else ""))
            extra += [switches[value]] if value in switches else []
        else:
            text = ",".join(map(str, value)) if isinstance(value, list) else \
                (json.dumps(value) if isinstance(value, dict) else str(value))
            if actions[0].choices is not None and text not in actions[0].choices:  # argparse would not name the file
                raise ConfigError(f"--config {path}: {key} must be one of "
                                  f"{', '.join(map(str, actions[0].choices))}, found {value!r}")
            extra += [flag, text]
    at = rest.index(command) + 1
    return rest[:at] + extra + rest[at:]


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(message)s", "%H:%M:%S"))
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
