"""Block planning: which register ranges to read, so a cycle costs the fewest frames on a slow bus.

At 9600 baud every transaction costs a request, a response and two 3.5-character silences (~12 ms of
fixed cost), so covering nearby points with one read is cheaper than reading them one by one as long
as the gap in between is small. Greedy left-to-right coverage of sorted points is optimal for "fewest
blocks, each no longer than N registers and with no hole longer than G".
"""
from __future__ import annotations

from dataclasses import dataclass

from drivers.modbus.profile import PointSpec


@dataclass(frozen=True)
class Block:
    """One read transaction: ``count`` registers from ``start`` with function code ``function``."""

    function: int
    start: int
    count: int
    points: tuple[PointSpec, ...]
    fast: bool = True

    @property
    def end(self) -> int:
        return self.start + self.count


def coalesce(points: list[PointSpec] | tuple[PointSpec, ...], max_registers: int, max_gap: int,
             fast: bool = True) -> list[Block]:
    """Fewest blocks covering ``points`` (which must have a register address)."""
    blocks: list[Block] = []
    for function in sorted({p.function for p in points}):
        todo = sorted((p for p in points if p.function == function), key=lambda p: (p.register, -p.count))
        current: list[PointSpec] = []
        start = end = 0
        for p in todo:
            p_end = p.register + p.count
            if current and p.register - end <= max_gap and max(end, p_end) - start <= max_registers:
                current.append(p)
                end = max(end, p_end)
                continue
            if current:
                blocks.append(Block(function, start, end - start, tuple(current), fast))
            if p.count > max_registers:
                raise ValueError(f"point {p.name} ({p.count} registers) exceeds max_registers {max_registers}")
            current, start, end = [p], p.register, p_end
        if current:
            blocks.append(Block(function, start, end - start, tuple(current), fast))
    return blocks


def plan(points, max_registers: int, max_gap: int) -> tuple[list[Block], list[Block]]:
    """(fast blocks, slow blocks): fast points are read every cycle, slow ones round-robin.

    A slow point that falls inside a fast block's range costs nothing extra, so it rides along there.
    """
    fast_points = [p for p in points if p.fast]
    fast_blocks = coalesce(fast_points, max_registers, max_gap, fast=True)
    riding: dict[int, list[PointSpec]] = {i: [] for i in range(len(fast_blocks))}
    slow_points = []
    for p in (p for p in points if not p.fast):
        for i, b in enumerate(fast_blocks):
            if b.function == p.function and b.start <= p.register and p.register + p.count <= b.end:
                riding[i].append(p)
                break
        else:
            slow_points.append(p)
    fast_blocks = [Block(b.function, b.start, b.count, b.points + tuple(riding[i]), True)
                   for i, b in enumerate(fast_blocks)]
    return fast_blocks, coalesce(slow_points, max_registers, max_gap, fast=False)


def transaction_bytes(block: Block) -> tuple[int, int]:
    """(request, response) RTU frame sizes for a read: addr+fc+start+count+crc; addr+fc+n+data+crc."""
    return 8, 5 + 2 * block.count
