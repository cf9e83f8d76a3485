"""The ``beatmon explain`` subcommand: draw why one beat scored as it did.

The beat comes from one of three places:

- ``--row N``: row N (from 0) of a beat file, the bundled ECG5000 unless
  ``--data`` names another;
- ``--samples TEXT``: the beat itself, as comma-separated numbers, a JSON
  array, or a beat message copied from the beat topic (``-`` reads it from
  standard input);
- ``--alert ID``: an alert the monitor published. The alert is read from the
  alert topic, the beat with its patient and seq from the beat topic, and
  the explanation must reproduce the alert's error and profile, or the
  command says why it does not.

Scoring runs on the bundle's serving path, the monitor's own code, so the
error, the flag and the marked segment are the monitor's.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from beatmon.cli import add_data_options
from beatmon.errors import BeatmonError, BundleError, DataError, MessageError
from beatmon.messages import Alert, beat_from_json
from beatmon.settings import Layout

if TYPE_CHECKING:
    from models.bundle import ServingBundle
    from models.explain import Explanation

logger = logging.getLogger(__name__)

# The alert carries its error and profile rounded to 6 decimals; the serving
# path reproduces them far closer than this.
ALERT_TOLERANCE = 1e-5
ROW_FLAGS = ("data", "layout", "normal_label")
ALERT_FLAGS = ("bootstrap", "alerts_topic", "beats_topic", "config", "timeout")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Chosen:
    """The beat to explain, what to call it, and the alert it came with."""

    samples: np.ndarray
    subject: str
    default_name: str
    truth: str | None = None
    alert: Alert | None = None


def add_parser(subparsers: Any) -> None:
    """Add the ``explain`` subcommand to ``beatmon``'s subparsers."""
    p = subparsers.add_parser(
        "explain",
        help="draw one beat, its reconstruction and the error that flagged it",
        description="Score one beat with a bundle on the monitor's serving path "
        "and draw it as a PNG: the beat and its reconstruction, the squared error "
        "along the beat, and the tenth of the beat that drove the score (the "
        "alerts' 10-segment profile). Choose the beat by --row, --samples or "
        "--alert.",
    )
    p.add_argument("--bundle", required=True, help="model bundle folder")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--row", type=int, metavar="N", help="row N (from 0) of the beat file --data"
    )
    which.add_argument(
        "--samples",
        metavar="TEXT",
        help="the beat: comma-separated numbers, a JSON array, or a beat message "
        "as on the beat topic; '-' reads it from standard input",
    )
    which.add_argument(
        "--alert",
        metavar="ID",
        help="an alert id: the alert is read from the alert topic and its beat "
        "from the beat topic",
    )
    p.add_argument(
        "--out",
        help="PNG to write (default: explain-<patient>-<seq>.png, "
        "explain-row-<N>.png or explain-beat.png in the current folder)",
    )
    add_data_options(
        p,
        data_default="ecg5000; with --row only",
        layout_default="auto",
        required_labels=False,
    )
    alerts = p.add_argument_group(
        "with --alert (defaults from the settings file and BEATMON_* variables)"
    )
    alerts.add_argument("--bootstrap", help="Kafka bootstrap servers (127.0.0.1:9092)")
    alerts.add_argument("--alerts-topic", help="topic of the alert (beatmon.alerts)")
    alerts.add_argument("--beats-topic", help="topic of the beat (beatmon.beats)")
    alerts.add_argument(
        "--config",
        metavar="FILE",
        help="settings file for Kafka and the topics (default: config/beatmon.yaml "
        "if present, or $BEATMON_CONFIG)",
    )
    alerts.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="longest time to read each topic, in seconds (60)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Explain the chosen beat, write the PNG, and print what it shows."""
    from models.bundle import load_serving_bundle
    from models.explain import explain, write_explanation

    _check_flags(args)
    model = load_serving_bundle(Path(args.bundle))
    if args.row is not None:
        chosen = from_row(args, model)
    elif args.samples is not None:
        chosen = from_samples(args.samples, model)
    else:
        chosen = from_alert(args, model)

    (explanation,) = explain(
        model.scorer,
        chosen.samples[np.newaxis, :],
        [chosen.subject],
        model.version,
        [chosen.truth],
    )
    if chosen.alert is not None:
        check_against_alert(explanation, chosen.alert)
    path = write_explanation(explanation, Path(args.out or chosen.default_name))
    print(explanation.summary())
    if chosen.alert is not None:
        print(
            f"It reproduces alert {chosen.alert.alert_id}: error "
            f"{chosen.alert.error:.6g} and the same segment profile."
        )
    print(f"Drawn to {path}.")
    return 0


def _check_flags(args: argparse.Namespace) -> None:
    for mode, flags in (("--row", ROW_FLAGS), ("--alert", ALERT_FLAGS)):
        given = [f for f in flags if getattr(args, f) is not None]
        wanted = args.row is not None if mode == "--row" else args.alert is not None
        if given and not wanted:
            shown = ", ".join("--" + f.replace("_", "-") for f in given)
            raise BeatmonError(f"{shown} only applies with {mode}")


def _safe(text: str) -> str:
    return _UNSAFE.sub("_", text)[:80]


def from_row(args: argparse.Namespace, model: ServingBundle) -> Chosen:
    """Row ``args.row`` of the beat file ``args.data`` (the bundled set by default)."""
    from models.data import BUILTIN, load_beats, resolve_normal_label

    spec = args.data or BUILTIN
    layout: Layout = args.layout or "auto"
    data = load_beats(spec, layout)
    if not 0 <= args.row < len(data.beats):
        raise DataError(
            f"row {args.row} is out of range: {data.source} has {len(data.beats)} "
            f"beats, rows 0 to {len(data.beats) - 1}"
        )
    truth = None
    if data.labels is not None:
        label = str(data.labels[args.row])
        try:
            normal = resolve_normal_label(data, args.normal_label)
        except DataError:
            # Without a normal label the class is still worth showing.
            truth = f"label {label}"
        else:
            truth = f"label {label}, {'normal' if label == normal else 'abnormal'}"
    return Chosen(
        samples=data.beats[args.row],
        subject=f"row {args.row} of {data.source}",
        default_name=f"explain-row-{args.row}.png",
        truth=truth,
    )


def from_samples(text: str, model: ServingBundle) -> Chosen:
    """The beat written out in ``text`` (or on stdin for ``-``)."""
    if text == "-":
        text = sys.stdin.read()
    text = text.strip()
    if not text:
        raise DataError("--samples is empty; give the beat's samples")
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise MessageError(
                f"--samples is not a valid beat message: {exc}"
            ) from None
        beat = beat_from_json(data, model.beat_length)
        return Chosen(
            samples=np.asarray(beat.samples, dtype=np.float64),
            subject=f"patient {beat.patient}, beat {beat.seq}",
            default_name=f"explain-{_safe(beat.patient)}-{beat.seq}.png",
            truth=beat.truth,
        )
    if text.startswith("["):
        try:
            values = json.loads(text)
        except ValueError as exc:
            raise DataError(f"--samples is not a valid JSON array: {exc}") from None
        tokens = values if isinstance(values, list) else [values]
    else:
        tokens = [t for t in re.split(r"[,\s]+", text) if t]
    samples = _numbers(tokens)
    if samples.size != model.beat_length:
        raise DataError(
            f"the beat has {samples.size} samples; the model {model.version} in "
            f"{model.path} expects {model.beat_length}"
        )
    return Chosen(
        samples=samples,
        subject="beat given with --samples",
        default_name="explain-beat.png",
    )


def _numbers(tokens: list[Any]) -> np.ndarray:
    values = []
    for i, token in enumerate(tokens):
        if isinstance(token, bool) or not isinstance(token, (int, float, str)):
            raise DataError(f"sample {i} is {token!r}, not a number")
        try:
            value = float(token)
        except ValueError:
            raise DataError(f"sample {i} is {token!r}, not a number") from None
        if not np.isfinite(value):
            raise DataError(f"sample {i} is {token!r}; samples must be finite")
        values.append(value)
    return np.array(values, dtype=np.float64)


def from_alert(args: argparse.Namespace, model: ServingBundle) -> Chosen:
    """The beat of alert ``args.alert``, both read back from Kafka."""
    from beatmon.settings import load_replay_settings
    from monitor.lookup import check_alert_id, find_alert, find_beat

    alert_id = check_alert_id(args.alert)
    settings = load_replay_settings(
        Path(args.config) if args.config else None,
        overrides={
            "kafka.bootstrap_servers": args.bootstrap,
            "topics.alerts": args.alerts_topic,
            "topics.beats": args.beats_topic,
        },
    )
    bootstrap = settings.kafka.bootstrap_servers
    options = settings.kafka.client_options()
    timeout_s = args.timeout if args.timeout is not None else 60.0
    alert = find_alert(
        bootstrap,
        settings.topics.alerts,
        alert_id,
        timeout_s=timeout_s,
        kafka_options=options,
    )
    if alert.model_version != model.version:
        raise BundleError(
            f"alert {alert_id} was scored by model {alert.model_version}, but "
            f"{model.path} holds {model.version}; pass the bundle that scored it, "
            "so the drawing shows what the monitor saw"
        )
    beat = find_beat(
        bootstrap,
        settings.topics.beats,
        alert,
        timeout_s=timeout_s,
        kafka_options=options,
    )
    return Chosen(
        samples=np.asarray(beat.samples, dtype=np.float64),
        subject=f"patient {alert.patient}, beat {alert.seq}",
        default_name=f"explain-{_safe(alert.patient)}-{alert.seq}.png",
        truth=beat.truth,
        alert=alert,
    )


def check_against_alert(explanation: Explanation, alert: Alert) -> None:
    """MessageError unless ``explanation`` reproduces the alert's numbers."""
    profile = np.asarray(alert.profile, dtype=np.float64)
    error_gap = abs(explanation.error - alert.error)
    same_shape = profile.shape == explanation.profile.shape
    profile_gap = (
        float(np.max(np.abs(profile - explanation.profile))) if same_shape else np.inf
    )
    if error_gap > ALERT_TOLERANCE or profile_gap > ALERT_TOLERANCE:
        raise MessageError(
            f"the beat found for alert {alert.alert_id} scores "
            f"{explanation.error:.6g}, the alert says {alert.error:.6g} (profile "
            f"differs by up to "
            f"{profile_gap:.2g}); the beat topic holds another beat under patient "
            f"{alert.patient} seq {alert.seq}, or the bundle is not the one that "
            "scored it"
        )
    logger.info(
        "alert reproduced: id=%s error_gap=%.2g profile_gap=%.2g",
        alert.alert_id,
        error_gap,
        profile_gap,
    )
