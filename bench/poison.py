"""Throughput and memory of the monitor on a stream that is half poison.

Two runs, one after the other, on a broker of the benchmark's own:

1. clean: ``--good`` valid beats alone;
2. poisoned: the same valid beats with ``--bad`` malformed messages shuffled
   in (tests/poison.py: about fifty kinds of damage, twelve messages of 1 or
   2 MiB among them; the beat topic accepts up to 4 MiB).

Each run is the real monitor in its own process (alarm policy on, MQTT,
metrics and per-beat scores off) reading a topic filled beforehand. We report
valid beats per second in both runs and their ratio, records per second, and
the poisoned monitor's resident memory at its first batch, after a quarter
of the records (by then it has met every kind of message) and at the end.

    .venv/bin/python bench/poison.py [--good 50000] [--bad 50000]

It starts its own broker on port 43192 through scripts/kafka and stops it at
the end (unless one already ran there).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, ensure_bundle, kafka

if TYPE_CHECKING:
    from tests.poison import Message, Progress

PORT = 43192
BOOTSTRAP = f"127.0.0.1:{PORT}"
WAIT_S = 600.0


def run(
    name: str, bundle: Path, messages: list[Message], folder: Path, expect_dead: int
) -> list[Progress]:
    """Fill a fresh topic with ``messages``, let a monitor consume them all,
    and return its progress lines."""
    from tests.poison import create_topics, delete_topics
    from tests.services import unique_name

    base = unique_name(f"bench-{name}")
    create_topics(BOOTSTRAP, base)
    try:
        return _consume(name, base, bundle, messages, folder, expect_dead)
    finally:
        delete_topics(BOOTSTRAP, base)


def _consume(
    name: str,
    base: str,
    bundle: Path,
    messages: list[Message],
    folder: Path,
    expect_dead: int,
) -> list[Progress]:
    from tests.poison import MonitorChild, produce

    started = time.perf_counter()
    produce(BOOTSTRAP, f"{base}.beats", messages)
    print(
        f"{name}: {len(messages):,} messages written in "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )
    child = MonitorChild(bundle, BOOTSTRAP, base, folder, name, scores=False)
    try:
        lines = child.wait_for(len(messages), WAIT_S)
        time.sleep(1.0)
        if not child.alive():
            sys.exit(f"{name}: the monitor stopped; log {child.log}")
    finally:
        code = child.stop() if child.alive() else child.proc.returncode
    if code != 0 or lines[-1].dead != expect_dead:
        sys.exit(
            f"{name}: exit code {code}, {lines[-1].dead} dead letters "
            f"(expected {expect_dead}); log {child.log}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description="the monitor on a poisoned stream")
    parser.add_argument("--good", type=int, default=50_000, help="valid beats")
    parser.add_argument("--bad", type=int, default=50_000, help="malformed messages")
    parser.add_argument("--seed", type=int, default=20261203)
    parser.add_argument("--bundle", default=str(REPO / "runs" / "dense"))
    args = parser.parse_args()

    from models.data import BUILTIN, load_beats
    from tests.poison import mixed_stream, rates

    already = "running" in kafka("status", PORT)
    kafka("start", PORT)
    try:
        bundle = ensure_bundle(Path(args.bundle))
        started = time.perf_counter()
        messages = mixed_stream(
            args.seed, load_beats(BUILTIN).beats, args.bad, args.good
        )
        good = [m for m in messages if m.good]
        megabytes = sum(len(m.value or b"") for m in messages) / 1e6
        print(
            f"stream: {args.good:,} valid + {args.bad:,} malformed messages "
            f"({megabytes:.0f} MB), made in {time.perf_counter() - started:.1f} s; "
            f"broker {BOOTSTRAP}; bundle {bundle}",
            flush=True,
        )
        folder = Path(tempfile.mkdtemp(prefix="beatmon-bench-poison-"))

        clean = run("clean", bundle, good, folder, expect_dead=0)
        poisoned = run("poisoned", bundle, messages, folder, expect_dead=args.bad)
        _, clean_beats_s = rates(clean)
        records_s, beats_s = rates(poisoned)
        print(f"clean:    {clean_beats_s:,.0f} valid beats/s")
        print(
            f"poisoned: {records_s:,.0f} records/s, of which {beats_s:,.0f} valid "
            f"beats/s ({args.bad / (args.bad + args.good):.0%} poison)"
        )
        print(
            f"ratio:    valid beats/s poisoned / clean = {beats_s / clean_beats_s:.2f}"
        )
        # mixed_stream puts half of the 1-2 MiB messages in the first fifth.
        warm = next(p for p in poisoned if p.records >= len(messages) // 4)
        print(
            f"RSS (poisoned run): first batch {poisoned[0].rss_mb:.1f} MB, after "
            f"{warm.records:,} records {warm.rss_mb:.1f} MB, end "
            f"{poisoned[-1].rss_mb:.1f} MB "
            f"({poisoned[-1].rss_mb - warm.rss_mb:+.1f} MB after the first quarter); "
            f"clean run end {clean[-1].rss_mb:.1f} MB"
        )
        print(f"monitor logs: {folder}")
    finally:
        if not already:
            kafka("stop", PORT)


if __name__ == "__main__":
    main()
