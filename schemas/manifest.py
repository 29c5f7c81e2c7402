"""ModelManifest: the metadata file describing one trained model version directory."""

from typing import Annotated, Final, Self

from pydantic import Field, StringConstraints, model_validator

from schemas.events import ContractModel, Timestamp, VersionedModel

ARTIFACT_FORMAT_VERSION: Final = 1
"""Artifact layout version written by the current trainer; loaders should reject versions they do not know."""

ModelVersion = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"),
    Field(description="Model version; also a directory name: 1-64 of [A-Za-z0-9._-], starting alphanumeric."),
]

FileName = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"),
    Field(description="Plain file name inside the version directory (no separators, not '.' or '..')."),
]

HyperValue = bool | int | float | str | list[int]
GateValue = bool | int | float | str | None


class TrainingWindow(ContractModel):
    """Time span [start, end] of the clicks the model was trained on (a component of ModelManifest)."""

    start: Timestamp
    end: Timestamp

    @model_validator(mode="after")
    def _check_order(self) -> Self:
        if self.end < self.start:
            raise ValueError("training_window.end must not be before training_window.start")
        return self


class ModelManifest(VersionedModel):
    """Metadata of one trained model version, stored as manifest.json in its version directory."""

    version: ModelVersion
    model_family: str = Field(
        default="gru4rec", pattern=r"^[a-z][a-z0-9_-]{0,31}$",
        description="Model family of the weights (e.g. gru4rec); manifests written before the field was added "
        "are gru4rec.",
    )
    created_at: Timestamp
    training_window: TrainingWindow
    data_digest: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 hex of the training data.")
    hyperparameters: dict[str, HyperValue] = Field(default_factory=dict)
    n_items: int = Field(gt=0, description="Size of the item vocabulary.")
    hidden_size: int = Field(gt=0)
    n_layers: int = Field(ge=1)
    metrics: dict[str, float] = Field(default_factory=dict, description="Offline evaluation metrics.")
    artifact_format_version: int = Field(default=ARTIFACT_FORMAT_VERSION, ge=1)
    files: dict[Annotated[str, StringConstraints(min_length=1, max_length=64)], FileName] = Field(
        default_factory=dict, description="Logical artifact name -> file name inside the version directory."
    )
    parent_version: ModelVersion | None = Field(default=None, description="Warm-start source version.")
    gate: dict[str, GateValue] | None = Field(default=None, description="Promotion gate decision record.")
