"""Blend hyperparameters: which GRU4REC, SASRec and V-SKNN models a blend trains, and how much each counts."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from offline.hyperparams import GRU4RecParams
from offline.sasrec_params import SASRecParams
from offline.vsknn_params import VSKNNParams

MemberParams = GRU4RecParams | SASRecParams | VSKNNParams


class BlendParams(BaseModel):
    """A blend of GRU4REC, SASRec and V-SKNN, trained one after the other on the same data (``modelkit.blend``).

    Each neural family is trained ``runs_per_family`` times (seeds ``seed``, ``seed + 1``, ...) and its runs share
    the family's weight equally; V-SKNN (deterministic) indexes the sessions once. A family of weight 0 is left
    out. Serving combines the members' next-click probabilities by ``combine``.

    With ``fit_weights`` the family weights are only the prior: each member is also trained without the newest
    ``fit_fraction`` of the sessions, and the members' weights are chosen on those sessions' next clicks
    (``offline.blend_fit``), so a training set where a member does worse gives it less say.

    Defaults: the served default of ``streamrec train``, GRU4REC 0.56 + SASRec 0.24 + V-SKNN 0.2, log-probabilities
    (a weighted geometric mean), one run each, each family with its own defaults: the prior chosen on two tuning
    days cut from the end of train_tr, never on train_valid (bench/tune_blend.py, docs/benchmarks.md), then fitted.

    >>> [(type(p).__name__, round(w, 3)) for p, w in BlendParams(runs_per_family=2, gru4rec_weight=0.5,
    ...  sasrec_weight=0.3, vsknn_weight=0.2).members()]  # doctest: +NORMALIZE_WHITESPACE
    [('GRU4RecParams', 0.25), ('GRU4RecParams', 0.25), ('SASRecParams', 0.15), ('SASRecParams', 0.15),
     ('VSKNNParams', 0.2)]
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    gru4rec: GRU4RecParams = Field(default_factory=GRU4RecParams)
    sasrec: SASRecParams = Field(default_factory=SASRecParams)
    vsknn: VSKNNParams = Field(default_factory=VSKNNParams)
    gru4rec_weight: float = Field(default=0.56, ge=0)
    sasrec_weight: float = Field(default=0.24, ge=0)
    vsknn_weight: float = Field(default=0.2, ge=0)
    runs_per_family: int = Field(default=1, ge=1, le=8, description="seeds per neural family, averaged")
    combine: Literal["probability", "log-probability"] = "log-probability"
    # weights fitted per training set (offline.blend_fit): the weights above are the prior
    fit_weights: bool = Field(default=True, description="choose the members' weights on the newest sessions")
    fit_fraction: float = Field(default=0.1, gt=0, lt=1, description="newest sessions held out to fit the weights "
                                "(SASRec's early-stopping run is reused when its valid_fraction is the same)")
    fit_step: float = Field(default=0.1, gt=0, le=0.5, description="weight grid step (must divide 1)")
    fit_tolerance: float = Field(default=0.005, ge=0, lt=1, description="relative: a weighting this close to the "
                                 "best on both metrics counts as as good; the one nearest the prior wins")
    fit_max_predictions: int = Field(default=20_000, ge=1, description="held-out next clicks scored, newest first")

    @model_validator(mode="after")
    def _check_weights(self) -> BlendParams:
        if self.gru4rec_weight + self.sasrec_weight + self.vsknn_weight <= 0:
            raise ValueError("a blend needs at least one family of positive weight")
        if abs(round(1 / self.fit_step) * self.fit_step - 1) > 1e-9:
            raise ValueError(f"fit_step ({self.fit_step}) must divide 1")
        return self

    def members(self) -> list[tuple[MemberParams, float]]:
        """Each member's hyperparameters and share of the blend (shares sum to 1): GRU4REC's runs, SASRec's,
        then V-SKNN."""
        total = self.gru4rec_weight + self.sasrec_weight + self.vsknn_weight
        runs: list[tuple[MemberParams, float]] = []
        for family, weight in ((self.gru4rec, self.gru4rec_weight), (self.sasrec, self.sasrec_weight)):
            if weight > 0:
                runs.extend((family.model_copy(update={"seed": family.seed + run}),
                             weight / total / self.runs_per_family) for run in range(self.runs_per_family))
        if self.vsknn_weight > 0:
            runs.append((self.vsknn, self.vsknn_weight / total))
        return runs

    @property
    def hidden_size(self) -> int:
        """The largest member's (a blend manifest's ``hidden_size``)."""
        return max(params.hidden_size for params, _ in self.members())

    @property
    def n_members(self) -> int:
        """How many members (a blend manifest's ``n_layers``)."""
        return len(self.members())

    @property
    def seed(self) -> int:
        """The first GRU4REC run's seed (warm starts draw new items' rows with it)."""
        return self.gru4rec.seed


def member_family(params: MemberParams) -> str:
    """The family a member's hyperparameters train."""
    return {GRU4RecParams: "gru4rec", SASRecParams: "sasrec", VSKNNParams: "vsknn"}[type(params)]


def member_layers(params: MemberParams) -> int:
    """A member's manifest ``n_layers``: SASRec blocks, GRU layers, 1 for V-SKNN."""
    if isinstance(params, SASRecParams):
        return params.n_blocks
    return len(params.layers) if isinstance(params, GRU4RecParams) else 1
