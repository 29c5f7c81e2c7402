"""What a training run did: per-epoch loss, time and throughput."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainingReport:
    """What a training run did: per-epoch loss and throughput."""

    epoch_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    events: int = 0

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0
