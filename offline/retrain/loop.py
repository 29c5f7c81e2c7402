"""Retraining on a schedule: CycleLoop runs one cycle every interval until stopped."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class CycleLoop:
    """Runs ``cycle`` every ``interval_s`` (start to start) until stopped; a failed cycle is logged, not fatal."""

    def __init__(self, cycle: Callable[[], Any], interval_s: float, max_cycles: int | None = None) -> None:
        if not (math.isfinite(interval_s) and interval_s > 0):
            raise ValueError(f"interval must be a positive number of seconds, got {interval_s!r}")
        self.cycle = cycle
        self.interval_s = interval_s
        self.max_cycles = max_cycles
        self.stop_event = threading.Event()
        self.in_cycle = False  # read by signal handlers that want to abort a running cycle
        self.cycles = 0
        self.failures = 0
        self.last_failed = False
        self.last_error = ""

    def stop(self) -> None:
        """Stop before the next cycle (safe from another thread or a signal handler)."""
        self.stop_event.set()

    def run(self) -> int:
        """Run until stopped or ``max_cycles`` ran; returns the number of cycles that failed."""
        while not self.stop_event.is_set():
            started = time.monotonic()
            self.in_cycle = True
            try:
                if self.stop_event.is_set():
                    break
                self.cycle()
                self.last_failed = False
            except KeyboardInterrupt:
                log.warning("cycle %d interrupted; nothing half-published", self.cycles + 1)
                self.stop_event.set()
                break
            except Exception as error:  # noqa: BLE001 - a failed cycle must not end the loop
                self.failures += 1
                self.last_failed = True
                self.last_error = " ".join(str(error).split()) or type(error).__name__
                log.error("cycle %d failed: %s: %s", self.cycles + 1, type(error).__name__, self.last_error)
            finally:
                self.in_cycle = False
            self.cycles += 1
            if self.max_cycles is not None and self.cycles >= self.max_cycles:
                break
            wait = max(0.0, started + self.interval_s - time.monotonic())
            log.info("next cycle in %.0f s", wait)
            self.stop_event.wait(wait)
        return self.failures
