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


@dataclass
class BlendReport(TrainingReport):
    """A blend's training: its members' reports in member order; seconds and events are their sums."""

    members: list[TrainingReport] = field(default_factory=list)

    @classmethod
    def of(cls, members: list[TrainingReport]) -> BlendReport:
        return cls(seconds=sum(m.seconds for m in members), events=sum(m.events for m in members), members=members)
