"""Changing the model while the monitor runs: watch the bundle, load it beside.

The monitor watches the bundle location it was started with
(``monitor.bundle``). Two layouts change it atomically:

- the folder is replaced by a rename, as ``beatmon train --out`` and
  :func:`models.bundle.save_bundle` do (they write a staging folder beside
  it and rename it into place);
- the location is a symbolic link to a versioned folder, switched with a
  rename (``ln -s v2 current.new && mv -T current.new current``).

A :class:`BundleWatcher` thread looks at the location every
``monitor.reload_interval_s`` seconds (``stat`` calls only). When what it
sees changed, and stayed so for one more look, it loads the bundle on its
own thread, with every hash checked, the way the monitor loaded the first
one. A bundle that fails (a changed file, a missing file, a beat length
other than the model in service) is refused with one log line and counted,
and the model in service goes on scoring. A good one waits in a slot until
the monitor loop takes it between two batches (:meth:`BundleWatcher.take`),
so every beat is scored by exactly one model, and the loop itself only
swaps a reference.

Looking twice lets a folder being copied into place settle before it is
judged. Should the location change while the bundle is loaded, the load is
discarded and tried again at the next look, so a bundle is never assembled
from the files of two.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol

from beatmon.errors import BundleError, ConfigError
from models.bundle import CONTENT_FILES, MANIFEST_FILE, ServingBundle

logger = logging.getLogger(__name__)

ReloadResult = Literal["ok", "refused"]
# What a look at the bundle location sees: the folder it resolves to, the
# folder's identity, and each bundle file's identity, size and change time.
Fingerprint = tuple[object, ...]


class ReloadMetrics(Protocol):
    """Counts reload attempts (monitor.metrics.MonitorMetrics fits)."""

    def count_reload(self, result: ReloadResult) -> None: ...


def fingerprint(path: Path) -> Fingerprint | None:
    """What ``path`` holds now, by ``stat`` alone; None when there is no folder."""
    try:
        real = path.resolve(strict=True)
        folder = real.stat()
    except OSError:
        return None
    files: list[object] = []
    for name in (MANIFEST_FILE, *CONTENT_FILES):
        try:
            st = (real / name).stat()
        except OSError:
            files.append((name, None))
            continue
        files.append((name, st.st_ino, st.st_size, st.st_mtime_ns))
    return (str(real), folder.st_ino, folder.st_mtime_ns, *files)


class BundleWatcher:
    """Finds a new bundle at ``path``, checks it off the scoring loop, and holds it.

    ``current`` is the model in service when the watcher starts. ``load`` is
    :func:`models.bundle.load_serving_bundle` unless a test passes another.
    """

    def __init__(
        self,
        path: Path,
        current: ServingBundle,
        interval_s: float,
        *,
        metrics: ReloadMetrics | None = None,
        load: Callable[[Path], ServingBundle] | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ConfigError(
                f"monitor.reload_interval_s must be above 0 to watch, got {interval_s}"
            )
        if load is None:
            from models.bundle import load_serving_bundle

            load = load_serving_bundle
        self.path = Path(path)
        self.interval_s = interval_s
        self.metrics = metrics
        self._load = load
        self._version = current.version
        self._beat_length = current.beat_length
        # Unknown at first: the first settled look loads the bundle, finds the
        # version in service, and from then on only changes count.
        self._judged: Fingerprint | None = None
        self._seen: Fingerprint | None = None
        self._gone_logged = False
        self._ready: ServingBundle | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refused = 0

    def start(self) -> None:
        """Look every ``interval_s`` seconds on a daemon thread until :meth:`close`."""
        self._thread = threading.Thread(
            target=self._run, name="beatmon-bundle-watcher", daemon=True
        )
        self._thread.start()
        logger.info(
            "watching the model bundle: path=%s every_s=%g", self.path, self.interval_s
        )

    def close(self) -> None:
        """Stop looking; waits for a load in progress to finish."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30.0)

    def take(self) -> ServingBundle | None:
        """The checked bundle waiting to go into service, once; else None."""
        with self._lock:
            ready, self._ready = self._ready, None
        return ready

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.look()
            except Exception:
                # A bug here must not end the watching for good, nor the monitor.
                logger.exception("bundle watcher: unexpected failure; still watching")

    def look(self) -> None:
        """Look at the location once; load, check and hold a new bundle if settled."""
        seen = fingerprint(self.path)
        if seen is None:
            if not self._gone_logged:
                logger.warning(
                    "model bundle path=%s is gone; version=%s keeps scoring until a "
                    "bundle is there again",
                    self.path,
                    self._version,
                )
                self._gone_logged = True
            self._seen = None
            return
        self._gone_logged = False
        if seen == self._judged:
            self._seen = seen
            return
        if seen != self._seen:
            # Changed since the last look: judge it once it holds still.
            self._seen = seen
            return
        self._judge(seen)

    def _judge(self, seen: Fingerprint) -> None:
        real = Path(str(seen[0]))
        try:
            bundle = self._load(real)
        except BundleError as exc:
            if fingerprint(self.path) != seen:
                logger.debug("model bundle changed while loading; looking again")
                return
            self._refuse(seen, str(exc))
            return
        if fingerprint(self.path) != seen:
            logger.debug("model bundle changed while loading; looking again")
            return
        self._judged = seen
        if bundle.beat_length != self._beat_length:
            self._refuse(
                seen,
                f"{real}: the model takes beats of {bundle.beat_length} samples, the "
                f"stream has beats of {self._beat_length}",
            )
            return
        if bundle.version == self._version:
            logger.debug(
                "model bundle path=%s holds version=%s, the one in service",
                real,
                bundle.version,
            )
            return
        logger.info(
            "model bundle loaded beside the running one: path=%s version=%s "
            "threshold=%.6g; it goes into service between two batches",
            real,
            bundle.version,
            bundle.threshold,
        )
        self._version = bundle.version
        with self._lock:
            self._ready = bundle

    def _refuse(self, seen: Fingerprint, reason: str) -> None:
        self._judged = seen
        self.refused += 1
        if self.metrics is not None:
            self.metrics.count_reload("refused")
        logger.error(
            "model bundle refused, version=%s keeps scoring: %s", self._version, reason
        )
