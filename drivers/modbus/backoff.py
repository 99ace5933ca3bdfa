"""Growing, capped wait for a device that keeps failing, on the scan cycle's clock.

A dead meter must not cost a full timeout x retries every cycle: that would stall every other device
on the same RS-485 segment. After each failed attempt the wait doubles, up to a cap, and one successful
transaction resets it. The first ``threshold - 1`` failures wait nothing: one collision with another
device's late reply must not take a healthy device off the bus for seconds.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Backoff:
    base_s: float = 1.0
    cap_s: float = 30.0
    factor: float = 2.0
    threshold: int = 2
    failures: int = 0
    next_try_s: float = float("-inf")

    def ready(self, now_s: float) -> bool:
        return now_s >= self.next_try_s

    @property
    def active(self) -> bool:
        return self.failures > 0

    def wait_s(self) -> float:
        if self.failures < self.threshold:
            return 0.0
        return min(self.cap_s, self.base_s * self.factor ** (self.failures - self.threshold))

    def failed(self, now_s: float) -> None:
        self.failures += 1
        self.next_try_s = now_s + self.wait_s()

    def succeeded(self) -> None:
        self.failures = 0
        self.next_try_s = float("-inf")
