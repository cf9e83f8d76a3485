"""The ``beatmon`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from beatmon import __version__
from beatmon.errors import BeatmonError

if TYPE_CHECKING:
    from models.data import BeatSet
    from models.train import TrainConfig

logger = logging.getLogger("beatmon.cli")

PACKAGE_LOGGERS = ("beatmon", "models", "monitor", "producers")


def quiet_tensorflow() -> None:
    """Set TensorFlow's environment before it is first imported.

    oneDNN's custom kernels sum floats in a varying order, so two runs with one
    seed differ in the last bits; the plain kernels keep training reproducible
    and also silence TensorFlow's start-up notices on stderr.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def configure_logging(verbose: bool) -> None:
    """Send beatmon's own log lines to stderr; keep TensorFlow's chatter out."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"
        )
    )
    for name in PACKAGE_LOGGERS:
        package_logger = logging.getLogger(name)
        package_logger.handlers[:] = [handler]
        package_logger.setLevel(logging.DEBUG if verbose else logging.INFO)
        package_logger.propagate = False
    quiet_tensorflow()
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)


def _add_data_options(
    parser: argparse.ArgumentParser, *, required_labels: bool
) -> None:
    parser.add_argument(
        "--data",
        default="ecg5000",
        help="beat file (UCR .tsv, binary .csv, plain .csv, optionally .gz), "
        "or 'ecg5000' for the bundled set (default)",
    )
    parser.add_argument(
        "--layout",
        choices=["auto", "ucr", "binary", "plain"],
        default="auto",
        help="file layout; 'auto' guesses from the name and contents (default)",
    )
    parser.add_argument(
        "--normal-label",
        help="the label that marks normal beats; needed for any labelled file "
        "but the bundled set"
        + (" (required for your own files)" if required_labels else ""),
    )


def load_labelled(
    args: argparse.Namespace, fallback_label: str | None = None
) -> tuple[BeatSet, str]:
    """Read ``--data``, settle the normal label, and print the class counts."""
    from models.data import describe_classes, load_beats, resolve_normal_label

    data = load_beats(args.data, args.layout)
    normal_label = resolve_normal_label(data, args.normal_label or fallback_label)
    for line in describe_classes(data, normal_label):
        if line.startswith("WARNING"):
            logger.warning("%s", line.removeprefix("WARNING").lstrip(": "))
        else:
            logger.info("%s", line)
    return data, normal_label


def _train_config(args: argparse.Namespace) -> TrainConfig:
    from models.threshold import ThresholdPolicy
    from models.train import TrainConfig

    return TrainConfig(
        batch_size=args.batch_size,
        max_epochs=args.epochs,
        patience=args.patience,
        seed=args.seed,
        policy=ThresholdPolicy.parse(args.threshold),
    )


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    from models.threshold import DEFAULT_POLICY

    parser.add_argument("--epochs", type=int, default=50, help="most epochs (50)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (32)")
    parser.add_argument(
        "--patience", type=int, default=5, help="early-stopping patience in epochs (5)"
    )
    parser.add_argument("--seed", type=int, default=0, help="split and weight seed (0)")
    parser.add_argument(
        "--threshold",
        default=DEFAULT_POLICY,
        metavar="POLICY",
        help="threshold policy, calibrated on validation normals: "
        "false-alarm-rate:R, percentile:P or mean-std:K "
        f"(default {DEFAULT_POLICY})",
    )


def cmd_train(args: argparse.Namespace) -> int:
    from models.autoencoder import get_spec
    from models.bundle import save_bundle
    from models.train import summary_paragraph, train

    spec = get_spec(args.model)
    data, normal_label = load_labelled(args)
    trained = train(data, normal_label, spec, _train_config(args))
    path = save_bundle(trained, Path(args.out))
    print(summary_paragraph(trained))
    print(f"Bundle written to {path}.")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from models.bundle import load_bundle
    from models.evaluate import evaluate

    bundle = load_bundle(Path(args.bundle))
    if args.data is None:
        args.data = bundle.metadata["data"]["source"]
    data, normal_label = load_labelled(args, fallback_label=bundle.normal_label)
    out = (
        Path(args.out) if args.out else bundle.path.parent / f"{bundle.path.name}-eval"
    )
    m = evaluate(bundle, data, normal_label, out)
    print(
        f"Evaluated {bundle.version} on {m['evaluated_on']}: ROC-AUC "
        f"{m['roc_auc']:.4f}, PR-AUC {m['pr_auc']:.4f}, sensitivity "
        f"{m['sensitivity']:.4f}, false-alarm rate {m['false_alarm_rate']:.4f}, "
        f"F1 {m['f1']:.4f}. Report: {out / 'report.md'}"
        if m["roc_auc"] is not None
        else f"Evaluated {bundle.version} on {m['evaluated_on']}. Report: "
        f"{out / 'report.md'}"
    )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from models.autoencoder import get_spec
    from models.compare import compare

    specs = [get_spec(name.strip()) for name in args.models.split(",") if name.strip()]
    if len(specs) < 2:
        raise BeatmonError(
            "--models needs at least two variants, for example dense,sparse"
        )
    if args.seeds < 2:
        raise BeatmonError("--seeds must be at least 2 to measure seed-to-seed noise")
    data, normal_label = load_labelled(args)
    result = compare(
        data, normal_label, specs, args.seeds, _train_config(args), Path(args.out)
    )
    for name, stats in result["models"].items():
        print(
            f"{name:>8}: ROC-AUC {stats['roc_auc']['mean']:.4f} ± "
            f"{stats['roc_auc']['std']:.4f}, PR-AUC {stats['pr_auc']['mean']:.4f} ± "
            f"{stats['pr_auc']['std']:.4f}, F1 {stats['f1']['mean']:.4f} ± "
            f"{stats['f1']['std']:.4f}, {stats['train_seconds']['mean']:.1f} s to train"
        )
    print(f"Written {Path(args.out) / 'compare.json'} and compare.md.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beatmon",
        description="Streaming ECG beat monitor: train autoencoders on normal beats, "
        "evaluate them, and watch a stream of beats.",
    )
    parser.add_argument("--version", action="version", version=f"beatmon {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train and calibrate one model, write a bundle")
    p.add_argument("--model", default="dense", help="variant to train (dense, sparse)")
    p.add_argument("--out", required=True, help="bundle folder to write")
    _add_data_options(p, required_labels=True)
    _add_training_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a bundle and write a report")
    p.add_argument("--bundle", required=True, help="bundle folder to evaluate")
    p.add_argument("--out", help="report folder (default: BUNDLE-eval beside it)")
    _add_data_options(p, required_labels=False)
    p.set_defaults(data=None, func=cmd_evaluate)

    p = sub.add_parser("compare", help="compare variants over several seeds")
    p.add_argument("--models", default="dense,sparse", help="comma-separated variants")
    p.add_argument("--seeds", type=int, default=5, help="number of seeds (5)")
    p.add_argument(
        "--out", required=True, help="folder for compare.json and compare.md"
    )
    _add_data_options(p, required_labels=True)
    _add_training_options(p)
    p.set_defaults(func=cmd_compare)

    from producers.cli import add_parser as add_replay_parser

    add_replay_parser(sub)

    from monitor.cli import add_parser as add_monitor_parser

    add_monitor_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except BeatmonError as exc:
        print(f"beatmon {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"beatmon {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
