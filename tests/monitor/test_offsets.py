"""Holes in a partition's offsets: beats deleted before the monitor read them."""

from __future__ import annotations

from monitor.offsets import Gap, OffsetGaps


def test_consecutive_offsets_leave_no_gap() -> None:
    gaps = OffsetGaps()
    assert [gaps.see("beats", 0, offset) for offset in range(100)] == [None] * 100


def test_a_jump_is_reported_once_with_the_missing_offsets() -> None:
    gaps = OffsetGaps()
    for offset in range(10):
        gaps.see("beats", 0, offset)
    gap = gaps.see("beats", 0, 250)
    assert gap == Gap("beats", 0, 10, 249)
    assert gap.beats == 240
    assert gaps.see("beats", 0, 251) is None


def test_offsets_delivered_again_are_no_gap() -> None:
    gaps = OffsetGaps()
    for offset in range(50):
        gaps.see("beats", 0, offset)
    # A restart or a hand-over delivers beats since the last commit again.
    assert [gaps.see("beats", 0, offset) for offset in range(20, 51)] == [None] * 31
    assert gaps.see("beats", 0, 53) == Gap("beats", 0, 51, 52)


def test_the_first_record_after_the_committed_offset_shows_a_deletion() -> None:
    gaps = OffsetGaps()
    gaps.expect("beats", 1, 40)
    assert gaps.see("beats", 1, 75) == Gap("beats", 1, 40, 74)


def test_without_an_expectation_the_first_record_is_taken_as_it_comes() -> None:
    gaps = OffsetGaps()
    assert gaps.see("beats", 2, 1_000) is None
    assert gaps.see("beats", 2, 1_001) is None


def test_partitions_are_followed_apart_and_can_be_forgotten() -> None:
    gaps = OffsetGaps()
    gaps.see("beats", 0, 5)
    gaps.see("beats", 1, 90)
    assert gaps.see("beats", 0, 6) is None
    assert gaps.see("beats", 1, 92) == Gap("beats", 1, 91, 91)
    gaps.forget([("beats", 0)])
    # Partition 0 went to another monitor and came back much later.
    assert gaps.see("beats", 0, 5_000) is None
