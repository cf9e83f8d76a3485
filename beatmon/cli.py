"""The ``beatmon`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from beatmon import __version__
from beatmon.errors import BeatmonError
from beatmon.settings import Layout, TrainerSettings, load_trainer_settings

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


CONFIG_HELP = (
    "settings file (default: config/beatmon.yaml if present, or $BEATMON_CONFIG)"
)

# Flag destination -> settings key, for the commands that read ``train.*``.
# Flags default to None, so only the flags given override file and environment.
TRAIN_FLAG_KEYS = {
    "data": "train.data",
    "layout": "train.layout",
    "normal_label": "train.normal_label",
    "model": "train.model",
    "out": "train.out",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "patience": "train.patience",
    "seed": "train.seed",
    "threshold": "train.threshold",
}
# compare trains every variant of --models for seeds 0..N-1 into its own --out.
COMPARE_FLAG_KEYS = {
    dest: key
    for dest, key in TRAIN_FLAG_KEYS.items()
    if dest not in ("model", "out", "seed")
}


def field_defaults(cls: type) -> dict[str, Any]:
    """The built-in default of each plain field of a settings class, for --help.

    Read from the dataclass fields, so no settings object is built (and no
    model code imported) just to print help.
    """
    return {
        item.name: item.default
        for item in dataclasses.fields(cls)
        if item.default is not dataclasses.MISSING
    }


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--config FILE`` for a subcommand that reads the settings."""
    parser.add_argument("--config", metavar="FILE", help=CONFIG_HELP)


def add_data_options(
    parser: argparse.ArgumentParser,
    *,
    data_default: str,
    layout_default: str,
    required_labels: bool,
) -> None:
    """Add --data, --layout and --normal-label, all defaulting to None.

    The defaults given are only shown in the help.
    """
    parser.add_argument(
        "--data",
        help="beat file (UCR .tsv, binary .csv, plain .csv, optionally .gz), "
        f"or 'ecg5000' for the bundled set (default {data_default})",
    )
    parser.add_argument(
        "--layout",
        choices=get_args(Layout),
        help="file layout; 'auto' guesses from the name and contents "
        f"(default {layout_default})",
    )
    parser.add_argument(
        "--normal-label",
        help="the label that marks normal beats; needed for any labelled file "
        "but the bundled set"
        + (" (required for your own files)" if required_labels else ""),
    )


def load_labelled(
    data_spec: str,
    layout: Layout,
    normal_label: str | None,
    fallback_label: str | None = None,
) -> tuple[BeatSet, str]:
    """Read ``data_spec``, settle the normal label, and log the class counts."""
    from models.data import describe_classes, load_beats, resolve_normal_label

    data = load_beats(data_spec, layout)
    label = resolve_normal_label(data, normal_label or fallback_label)
    for line in describe_classes(data, label):
        if line.startswith("WARNING"):
            logger.warning("%s", line.removeprefix("WARNING").lstrip(": "))
        else:
            logger.info("%s", line)
    return data, label


def trainer_settings_from_args(
    args: argparse.Namespace,
    env: Mapping[str, str] | None = None,
    *,
    flag_keys: Mapping[str, str] = TRAIN_FLAG_KEYS,
) -> TrainerSettings:
    """The trainer's settings: file, then environment (``env`` or os.environ),
    then the flags given."""
    overrides = {key: getattr(args, dest) for dest, key in flag_keys.items()}
    path = Path(args.config) if args.config else None
    return load_trainer_settings(path, env, overrides)


def train_config(settings: TrainerSettings) -> TrainConfig:
    """The training hyper-parameters ``settings`` hold."""
    from models.threshold import ThresholdPolicy
    from models.train import TrainConfig

    return TrainConfig(
        batch_size=settings.batch_size,
        max_epochs=settings.epochs,
        patience=settings.patience,
        seed=settings.seed,
        policy=ThresholdPolicy.parse(settings.threshold),
    )


def _add_training_options(parser: argparse.ArgumentParser, *, seed: bool) -> None:
    d = field_defaults(TrainerSettings)
    add_config_option(parser)
    add_data_options(
        parser,
        data_default=d["data"],
        layout_default=d["layout"],
        required_labels=True,
    )
    parser.add_argument(
        "--epochs", type=int, help=f"most epochs (default {d['epochs']})"
    )
    parser.add_argument(
        "--batch-size", type=int, help=f"batch size (default {d['batch_size']})"
    )
    parser.add_argument(
        "--patience",
        type=int,
        help=f"early-stopping patience in epochs (default {d['patience']})",
    )
    if seed:
        parser.add_argument(
            "--seed", type=int, help=f"split and weight seed (default {d['seed']})"
        )
    parser.add_argument(
        "--threshold",
        metavar="POLICY",
        help="threshold policy, calibrated on validation normals: "
        "false-alarm-rate:R, percentile:P or mean-std:K "
        f"(default {d['threshold']})",
    )


def cmd_train(args: argparse.Namespace) -> int:
    from models.autoencoder import get_spec
    from models.bundle import save_bundle
    from models.train import summary_paragraph, train

    settings = trainer_settings_from_args(args)
    logger.info("settings: %s", settings.describe())
    spec = get_spec(settings.model)
    data, normal_label = load_labelled(
        settings.data, settings.layout, settings.normal_label
    )
    trained = train(data, normal_label, spec, train_config(settings))
    path = save_bundle(trained, settings.out)
    print(summary_paragraph(trained))
    print(f"Bundle written to {path}.")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from models.bundle import load_bundle
    from models.evaluate import evaluate

    bundle = load_bundle(Path(args.bundle))
    data_spec = args.data or bundle.metadata["data"]["source"]
    data, normal_label = load_labelled(
        data_spec, args.layout, args.normal_label, fallback_label=bundle.normal_label
    )
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
    from models.autoencoder import VARIANTS, get_spec
    from models.compare import compare, results_table, winners_table

    names = args.models.split(",") if args.models else list(VARIANTS)
    specs = [get_spec(name.strip()) for name in names if name.strip()]
    if len(specs) < 2:
        raise BeatmonError(
            "--models needs at least two variants, for example dense,sparse"
        )
    if args.seeds < 2:
        raise BeatmonError("--seeds must be at least 2 to measure seed-to-seed noise")
    settings = trainer_settings_from_args(args, flag_keys=COMPARE_FLAG_KEYS)
    logger.info("settings: %s", settings.describe())
    data, normal_label = load_labelled(
        settings.data, settings.layout, settings.normal_label
    )
    result = compare(
        data, normal_label, specs, args.seeds, train_config(settings), Path(args.out)
    )
    print("\n".join(results_table(result)))
    print()
    print("\n".join(winners_table(result)))
    print(
        f"\n{len(specs)} models x {args.seeds} seeds took "
        f"{result['wall_seconds']:.0f} s. Written {Path(args.out) / 'compare.json'} "
        "and compare.md."
    )
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

    from models.autoencoder import VARIANTS

    d = field_defaults(TrainerSettings)
    p = sub.add_parser(
        "train",
        help="train and calibrate one model, write a bundle",
        description="Train one autoencoder on normal beats, calibrate its "
        "threshold and write a bundle. Settings come from the file (train "
        "section), then BEATMON_TRAIN__* variables, then these flags; the "
        "defaults shown are the built-in ones.",
    )
    p.add_argument(
        "--model",
        help=f"variant to train: {', '.join(VARIANTS)} (default {d['model']})",
    )
    p.add_argument("--out", help=f"bundle folder to write (default {d['out']})")
    _add_training_options(p, seed=True)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a bundle and write a report")
    p.add_argument("--bundle", required=True, help="bundle folder to evaluate")
    p.add_argument("--out", help="report folder (default: BUNDLE-eval beside it)")
    add_data_options(
        p,
        data_default="the data the bundle was trained on",
        layout_default="auto",
        required_labels=False,
    )
    p.set_defaults(layout="auto", func=cmd_evaluate)

    p = sub.add_parser(
        "compare",
        help="compare variants over several seeds",
        description="Train each variant for seeds 0..N-1 and compare them, paired "
        "by seed. Data and training numbers come from the train settings "
        "(file, then BEATMON_TRAIN__* variables), then these flags.",
    )
    p.add_argument(
        "--models",
        help=f"comma-separated variants (default: all, {','.join(VARIANTS)})",
    )
    p.add_argument("--seeds", type=int, default=5, help="number of seeds (5)")
    p.add_argument(
        "--out", required=True, help="folder for compare.json and compare.md"
    )
    _add_training_options(p, seed=False)
    p.set_defaults(func=cmd_compare)

    from producers.cli import add_parser as add_replay_parser

    add_replay_parser(sub)

    from monitor.cli import add_parser as add_monitor_parser

    add_monitor_parser(sub)

    from beatmon.explain import add_parser as add_explain_parser

    add_explain_parser(sub)
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
