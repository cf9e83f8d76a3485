"""Benchmark of the model lab: training time and scoring throughput.

Trains the reference model once on the bundled ECG5000, then scores beats
through the serving path (NumPy) at batch sizes 1, 64 and 1024, and through
Keras ``model(x)`` and ``model.predict`` on the same beats as baselines
measured in the same run.

    .venv/bin/python bench/lab.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import numpy as np

from beatmon.cli import quiet_tensorflow

quiet_tensorflow()

from models.autoencoder import VARIANTS  # noqa: E402
from models.data import load_beats  # noqa: E402
from models.train import train  # noqa: E402

BATCH_SIZES = (1, 64, 1024)


def beats_per_second(
    score: Callable[[np.ndarray], object], beats: np.ndarray, batch: int, seconds: float
) -> float:
    """Score consecutive batches for about ``seconds``; return beats per second."""
    score(beats[:batch])
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        offset = (done % (len(beats) - batch)) if len(beats) > batch else 0
        score(beats[offset : offset + batch])
        done += batch
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="time per measurement"
    )
    args = parser.parse_args()

    import tensorflow as tf

    data = load_beats("ecg5000")
    started = time.perf_counter()
    trained = train(data, "1", VARIANTS["dense"], on_epoch=lambda *_: None)
    wall_s = time.perf_counter() - started
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"TensorFlow {tf.__version__}, NumPy {np.__version__}"
    )
    print(
        f"training: {trained.epochs_run} epochs, fit {trained.train_seconds:.1f} s, "
        f"with calibration and test scoring {wall_s:.1f} s"
    )

    from models.scoring import Scorer, limit_blas_threads

    limit_blas_threads()
    scorer = Scorer.from_keras(trained.model, trained.scaler, trained.threshold)
    model = trained.model

    def keras_call(x: np.ndarray) -> object:
        return model(trained.scaler.transform(x), training=False)

    def keras_predict(x: np.ndarray) -> object:
        return model.predict(trained.scaler.transform(x), verbose=0)

    print()
    print("scoring throughput, beats per second (error, flag and profile per beat)")
    print(
        f"{'batch':>6} {'serving (NumPy)':>16} {'keras model(x)':>15} "
        f"{'model.predict':>14} {'speed-up vs model(x)':>21}"
    )
    for batch in BATCH_SIZES:
        serving = beats_per_second(scorer.score, data.beats, batch, args.seconds)
        direct = beats_per_second(keras_call, data.beats, batch, args.seconds)
        predict = beats_per_second(keras_predict, data.beats, batch, args.seconds / 2)
        print(
            f"{batch:>6} {serving:>16,.0f} {direct:>15,.0f} {predict:>14,.0f} "
            f"{serving / direct:>20.1f}x"
        )


if __name__ == "__main__":
    main()
