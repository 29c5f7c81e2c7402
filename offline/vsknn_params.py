"""V-SKNN hyperparameters (the kNN member of a blend): the defaults of the baseline's search on the sample."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.manifest import HyperValue


class VSKNNParams(BaseModel):
    """How V-SKNN finds and weighs neighbour sessions (``modelkit.vsknn``); "training" indexes the sessions.

    Defaults: the best MRR@20 of the baseline grid on an inner time split of rsc15-100k
    (bench/baselines_rsc15.py --inner); ``max_len`` = the worker's ring of recent items, so a served session's
    window is its whole prefix up to 50 clicks.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    k: int = Field(default=100, ge=1, description="neighbours that vote")
    sample_size: int = Field(default=1000, ge=0, description="most recent candidate sessions kept (0: all)")
    weighting: Literal["div", "linear", "same"] = "div"
    similarity: Literal["dot", "cosine"] = "cosine"
    idf: bool = True
    max_len: int = Field(default=50, ge=1, le=1024, description="clicks of a session's prefix it looks at")

    @property
    def hidden_size(self) -> int:
        """A vsknn manifest's hidden_size: the window."""
        return self.max_len

    def flat(self) -> dict[str, HyperValue]:
        """JSON-friendly dict for the manifest (the index sizes are added by the trainer)."""
        return self.model_dump()
