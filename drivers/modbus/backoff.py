"""Growing, capped wait for a device that keeps failing, on the scan cycle's clock.

A dead meter must not cost a full timeout x retries every cycle: that would stall every other device
on the same RS-485 segment. After each failed attempt the wait doubles, up to a cap, and one successful
transaction resets it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Backoff:
    base_s: float = 1.0
    cap_s: float = 30.0
    factor: float = 2.0
    failures: int = 0
    next_try_s: float = float("-inf")

    def ready(self, now_s: float) -> bool:
        return now_s >= self.next_try_s

    @property
    def active(self) -> bool:
        return self.failures > 0

    def wait_s(self) -> float:
        return min(self.cap_s, self.base_s * self.factor ** max(0, self.failures - 1))

    def failed(self, now_s: float) -> None:
        self.failures += 1
        self.next_try_s = now_s + self.wait_s()

    def succeeded(self) -> None:
        self.failures = 0
        self.next_try_s = float("-inf")
