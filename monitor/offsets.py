"""Beats the broker deleted before the monitor could read them.

Offsets of a beat partition run on without holes: beatmon's replay neither
writes in transactions nor compacts the topic. When the monitor falls behind
by more than the topic keeps (``retention.ms`` or ``retention.bytes``), or
stays stopped that long, the broker deletes beats nobody scored; the consumer
then starts again at the oldest offset still there. Nothing in the stream says
so except that the offsets jump, which is what this module watches for.

A producer that writes in transactions leaves one offset per commit or abort
marker, which the consumer never hands out; such holes are counted too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Gap:
    """Offsets ``first`` to ``last`` of a partition, never delivered."""

    topic: str
    partition: int
    first: int
    last: int

    @property
    def beats(self) -> int:
        return self.last - self.first + 1


class OffsetGaps:
    """The next offset expected of each partition, and the holes before what came.

    An offset at or below the expected one is a beat delivered again (after a
    restart or a rebalance) and is no gap.
    """

    def __init__(self) -> None:
        self._next: dict[tuple[str, int], int] = {}

    def expect(self, topic: str, partition: int, offset: int) -> None:
        """The next record of the partition should have ``offset``: the group's
        committed offset when the partition is assigned."""
        self._next[topic, partition] = offset

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Stop following partitions that went to another monitor."""
        for key in partitions:
            self._next.pop(key, None)

    def see(self, topic: str, partition: int, offset: int) -> Gap | None:
        """Note a record; the hole before it, if there is one."""
        key = (topic, partition)
        expected = self._next.get(key)
        if expected is None or offset + 1 > expected:
            self._next[key] = offset + 1
        if expected is not None and offset > expected:
            return Gap(topic, partition, expected, offset - 1)
        return None
