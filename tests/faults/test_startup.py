"""Faults at start-up: a damaged model bundle, and a full disk for a new one.

A monitor that cannot load its model must stop within seconds, exit
non-zero and say in one line which file is wrong and how; it must not
retry silently. A trainer that cannot write its bundle must leave the old
one intact and say why.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from models.bundle import MANIFEST_FILE, verify_bundle
from tests.faults.harness import FaultTable
from tests.services import unique_name
from tests.streams import beatmon_command

pytestmark = [pytest.mark.integration, pytest.mark.faults]

# A monitor that loads its model normally starts in about a second here;
# failing "fast" leaves room for a loaded machine, not for retries.
FAIL_FAST_S = 15.0


@dataclass(frozen=True)
class Damage:
    """One way a bundle can be broken: what to do to a copy, and what the
    error line must then name."""

    name: str
    apply: Callable[[Path], Path]
    says: str


def _rehash(bundle: Path, name: str) -> None:
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    manifest["files"][name] = hashlib.sha256((bundle / name).read_bytes()).hexdigest()
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest))


def _missing_folder(bundle: Path) -> Path:
    shutil.rmtree(bundle)
    return bundle


def _missing_file(bundle: Path) -> Path:
    (bundle / "serving.npz").unlink()
    return bundle


def _folder_for_file(bundle: Path) -> Path:
    (bundle / "serving.npz").unlink()
    (bundle / "serving.npz").mkdir()
    return bundle


def _unreadable(bundle: Path) -> Path:
    # Root reads any file whatever its mode, so permissions cannot make one
    # unreadable here; reading /proc/self/mem at offset 0 fails with EIO.
    (bundle / "serving.npz").unlink()
    (bundle / "serving.npz").symlink_to("/proc/self/mem")
    return bundle / "serving.npz"


def _truncated(bundle: Path) -> Path:
    os.truncate(bundle / "serving.npz", 1000)
    return bundle / "serving.npz"


def _corrupt_but_rehashed(bundle: Path) -> Path:
    os.truncate(bundle / "serving.npz", 1000)
    _rehash(bundle, "serving.npz")
    return bundle / "serving.npz"


def _tampered_hash(bundle: Path) -> Path:
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    manifest["files"]["threshold.json"] = "0" * 64
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest))
    return bundle / "threshold.json"


def _manifest_not_json(bundle: Path) -> Path:
    (bundle / MANIFEST_FILE).write_text('{"format": 1, "files": {')
    return bundle / MANIFEST_FILE


DAMAGES = [
    Damage("bundle folder missing", _missing_folder, "no model bundle"),
    Damage("serving.npz missing", _missing_file, "missing serving.npz"),
    Damage("folder in place of serving.npz", _folder_for_file, "should be a file"),
    Damage("serving.npz unreadable (I/O error)", _unreadable, "Input/output error"),
    Damage("serving.npz truncated", _truncated, "does not match the hash"),
    Damage(
        "serving.npz corrupt, hash re-signed",
        _corrupt_but_rehashed,
        "cannot read the serving weights",
    ),
    Damage("manifest hash tampered", _tampered_hash, "does not match the hash"),
    Damage("manifest.json not JSON", _manifest_not_json, "cannot read JSON"),
]


def error_lines(output: str, command: str) -> list[str]:
    return [
        line
        for line in output.splitlines()
        if line.startswith(f"beatmon {command}: error:")
    ]


@pytest.mark.parametrize("damage", DAMAGES, ids=[d.name for d in DAMAGES])
def test_a_damaged_bundle_stops_the_monitor_at_once(
    damage: Damage,
    kafka_bootstrap: str,
    bundle: Path,
    tmp_path: Path,
    fault_table: FaultTable,
) -> None:
    with fault_table.scenario(f"start-up: {damage.name}") as row:
        broken = tmp_path / "bundle"
        shutil.copytree(bundle, broken)
        named = damage.apply(broken)
        topic = unique_name("fault-start")
        started = time.monotonic()
        try:
            result = subprocess.run(
                [
                    *beatmon_command(),
                    "monitor",
                    "--bundle",
                    str(broken),
                    "--bootstrap",
                    kafka_bootstrap,
                    "--beats-topic",
                    topic,
                    "--group",
                    topic,
                    "--no-mqtt",
                    "--no-metrics",
                ],
                capture_output=True,
                text=True,
                timeout=FAIL_FAST_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(
                f"the monitor still ran after {FAIL_FAST_S:g} s with a broken bundle"
            ) from exc
        elapsed_s = time.monotonic() - started
        output = result.stdout + result.stderr
        assert result.returncode == 2, output
        assert "Traceback" not in output, output
        (line,) = error_lines(output, "monitor")
        assert str(named) in line and damage.says in line, line
        row.result = f"pass: exit 2 after {elapsed_s:.1f} s"


@contextmanager
def tiny_disk(folder: Path, size_kib: int) -> Iterator[str]:
    """``folder`` on a tmpfs of ``size_kib``; yields how the disk is limited.

    Without the right to mount (not root, or a container without it), the
    writer runs under RLIMIT_FSIZE instead: then a write fails with EFBIG
    rather than ENOSPC, but just as surely.
    """
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        yield "rlimit"
        return
    try:
        yield "tmpfs"
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def _limit_file_size(limit_bytes: int) -> Callable[[], None]:
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return apply


def test_a_full_disk_leaves_the_old_bundle_and_says_so(
    bundle: Path, tmp_path: Path, fault_table: FaultTable
) -> None:
    """``beatmon train --out`` on a disk with room for the old bundle only."""
    with fault_table.scenario("disk full: beatmon train --out") as row:
        old_kib = sum(f.stat().st_size for f in bundle.iterdir()) // 1024
        disk = tmp_path / "disk"
        with tiny_disk(disk, old_kib + 512) as how:
            out = disk / "bundle"
            shutil.copytree(bundle, out)
            manifest = (out / MANIFEST_FILE).read_bytes()
            started = time.monotonic()
            result = subprocess.run(
                [
                    *beatmon_command(),
                    "train",
                    "--epochs",
                    "1",
                    "--out",
                    str(out),
                ],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
                preexec_fn=_limit_file_size(256 * 1024) if how == "rlimit" else None,
            )
            elapsed_s = time.monotonic() - started
            output = result.stdout + result.stderr
            assert result.returncode == 2, output
            assert "Traceback" not in output, output
            (line,) = error_lines(output, "train")
            problem = "No space left on device" if how == "tmpfs" else "too large"
            assert str(out) in line and problem in line, line
            assert "unchanged" in line, line
            assert (out / MANIFEST_FILE).read_bytes() == manifest
            verify_bundle(out)
            assert sorted(p.name for p in disk.iterdir()) == ["bundle"]
        row.result = f"pass ({how}): exit 2 after {elapsed_s:.0f} s, old bundle intact"
