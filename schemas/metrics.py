"""OnlineMetrics: how well one model version's published predictions matched the clicks that followed."""

from pydantic import Field

from schemas.events import ContractModel, Timestamp, VersionedModel
from schemas.manifest import ModelVersion


class RankingCounts(ContractModel):
    """Evaluated predictions and their hits: hit@k counts and the sum of reciprocal ranks within the top 20."""

    n: int = Field(ge=0, description="predictions whose next click was seen")
    hits_at_1: int = Field(ge=0)
    hits_at_5: int = Field(ge=0)
    hits_at_10: int = Field(ge=0)
    hits_at_20: int = Field(ge=0)
    reciprocal_rank_sum: float = Field(ge=0, description="sum of 1/rank where rank <= 20, else 0 (ties count against)")


class OnlineMetrics(VersionedModel):
    """Published by each worker to the metrics topic at a fixed interval, one message per model version."""

    worker: str = Field(min_length=1, max_length=256, description="app id and host of the reporting worker")
    model_version: ModelVersion
    produced_at: Timestamp
    since_start: RankingCounts
    window: RankingCounts = Field(description="the last `window_size` evaluated predictions of this version")
    window_size: int = Field(ge=1)
