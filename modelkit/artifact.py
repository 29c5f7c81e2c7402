"""Model artifacts on disk: version directories (weights, item ids, popularity, manifest), written and loaded."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from modelkit.blend import member_fields, member_part
from modelkit.families import family_named
from modelkit.family import SessionModel
from modelkit.item_index import ItemIndex
from schemas import ModelManifest
from schemas.manifest import ARTIFACT_FORMAT_VERSION

CURRENT = "current"
"""``MODELS_DIR/current``: a relative symlink to the current version, replaced atomically."""
MANIFEST_FILE = "manifest.json"
FILES = {"weights": "weights.npz", "item_ids": "item_ids.json", "popularity": "item_popularity.npy"}
MAX_ARTIFACT_FILE_BYTES = 2 * 1024**3


class ArtifactError(ValueError):
    """The artifact is missing, malformed or inconsistent; the message says which and why (one line)."""


@dataclass(frozen=True)
class ModelArtifact:
    """A loaded, validated model version."""

    path: Path  # the concrete version directory (never the ``current`` link)
    manifest: ModelManifest
    weights: dict[str, np.ndarray]
    item_index: ItemIndex
    popularity: np.ndarray  # (n_items,) training clicks per item index

    @property
    def version(self) -> str:
        return self.manifest.version

    def model(self) -> SessionModel:
        """The NumPy model of the manifest's family, for serving and evaluation."""
        return family_named(self.manifest.model_family).build(self.weights, self.manifest.hyperparameters)


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_artifact(
    models_dir: Path,
    manifest: ModelManifest,
    weights: dict[str, np.ndarray],
    item_index: ItemIndex,
    popularity: np.ndarray,
    make_current: bool = True,
) -> Path:
    """Write a new version directory atomically (temp dir + rename), then optionally point ``current`` at it."""
    _check_consistency(manifest, weights, item_index, popularity)
    index_names = family_named(manifest.model_family).index_weights(manifest.hyperparameters)
    models_dir.mkdir(parents=True, exist_ok=True)
    final = models_dir / manifest.version
    if final.exists():
        raise ArtifactError(f"model version {manifest.version} already exists in {models_dir}")
    staging = models_dir / f".tmp-{manifest.version}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        files = {**FILES, **manifest.files}
        with open(staging / files["weights"], "wb") as handle:
            arrays: dict[str, Any] = {k: np.ascontiguousarray(v, dtype=np.int64 if k in index_names else np.float32)
                                      for k, v in weights.items()}
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_write(staging / files["item_ids"], json.dumps(item_index.ids.tolist()).encode())
        with open(staging / files["popularity"], "wb") as handle:
            np.save(handle, np.asarray(popularity, dtype=np.int64), allow_pickle=False)
        final_manifest = manifest.model_copy(update={"files": files})
        _fsync_write(staging / MANIFEST_FILE, final_manifest.model_dump_json(indent=2).encode())
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if make_current:
        set_current(models_dir, manifest.version)
    return final


def set_current(models_dir: Path, version: str) -> None:
    """Atomically repoint ``models_dir/current`` (a relative symlink) at an existing version."""
    if not (models_dir / version / MANIFEST_FILE).is_file():
        raise ArtifactError(f"no model version {version!r} in {models_dir}")
    link = models_dir / f".{CURRENT}-{secrets.token_hex(4)}"
    os.symlink(version, link)
    os.replace(link, models_dir / CURRENT)


def current_version(models_dir: Path) -> str | None:
    """Version the ``current`` pointer names, or None when there is none."""
    link = models_dir / CURRENT
    return os.readlink(link) if link.is_symlink() else None


def _read_file(directory: Path, name: str) -> Path:
    path = directory / name
    if path.is_symlink() or not path.is_file():
        raise ArtifactError(f"artifact file {name} is missing in {directory}")
    if path.stat().st_size > MAX_ARTIFACT_FILE_BYTES:
        raise ArtifactError(f"artifact file {name} in {directory} is larger than allowed")
    return path


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def _read(directory: Path, name: str, reader: Any) -> Any:
    """Read one artifact file; any parse failure (truncated zip, bad JSON, pickled array) names the file."""
    path = _read_file(directory, name)
    try:
        return reader(path)
    # MemoryError: an .npy header that claims a huge array makes NumPy allocate before it reads anything.
    except (OSError, ValueError, EOFError, MemoryError, zipfile.BadZipFile) as error:
        raise ArtifactError(f"unreadable {name} in {directory}: {type(error).__name__}: {error}") from None


def load_artifact(path: Path) -> ModelArtifact:
    """Load and validate a version directory (or the ``current`` link, resolved once to its version)."""
    directory = Path(path).resolve()
    if not directory.is_dir():
        raise ArtifactError(f"no model directory at {path}")
    try:
        manifest = ModelManifest.model_validate_json(_read_file(directory, MANIFEST_FILE).read_bytes())
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "manifest"
        raise ArtifactError(f"invalid manifest in {directory}: {where}: {first['msg']}") from None
    if manifest.artifact_format_version != ARTIFACT_FORMAT_VERSION:
        raise ArtifactError(f"unsupported artifact format {manifest.artifact_format_version} in {directory}")
    missing = set(FILES) - set(manifest.files)
    if missing:
        raise ArtifactError(f"manifest in {directory} lists no file for {', '.join(sorted(missing))}")
    weights = _read(directory, manifest.files["weights"], _read_npz)
    item_ids = _read(directory, manifest.files["item_ids"], lambda p: json.loads(p.read_text(encoding="utf-8")))
    popularity = _read(directory, manifest.files["popularity"], lambda p: np.load(p, allow_pickle=False))
    if not isinstance(item_ids, list) or not all(isinstance(i, str) for i in item_ids):
        raise ArtifactError(f"item id map in {directory} must be a JSON list of strings")
    try:
        item_index = ItemIndex(item_ids)
    except (TypeError, ValueError) as error:
        raise ArtifactError(f"item id map in {directory}: {error}") from None
    _check_consistency(manifest, weights, item_index, popularity)
    return ModelArtifact(directory, manifest, weights, item_index, popularity)


def _check_consistency(
    manifest: ModelManifest, weights: dict[str, np.ndarray], item_index: ItemIndex, popularity: np.ndarray
) -> None:
    try:
        family = family_named(manifest.model_family)
        expected = family.weight_shapes(manifest.n_items, manifest.hidden_size, manifest.n_layers,
                                        manifest.hyperparameters)
    except ValueError as error:
        raise ArtifactError(f"manifest {manifest.version}: {error}") from None
    if set(weights) != set(expected):
        raise ArtifactError(
            f"manifest {manifest.version}: weight arrays {sorted(weights)} differ from expected {sorted(expected)}"
        )
    index_names = family.index_weights(manifest.hyperparameters)
    for name, shape in expected.items():
        array = weights[name]
        kind = "integer" if name in index_names else "float"
        if array.shape != shape or array.dtype.kind not in ("iu" if kind == "integer" else "f"):
            raise ArtifactError(f"manifest {manifest.version}: weight {name} has shape {array.shape} {array.dtype}, "
                                f"expected {shape} {kind}")
        if kind == "float" and not np.isfinite(array).all():
            raise ArtifactError(f"manifest {manifest.version}: weight {name} contains NaN or infinity")
        if kind == "integer" and len(array) and array.min() < 0:
            raise ArtifactError(f"manifest {manifest.version}: index weight {name} holds negative values")
    if len(item_index) != manifest.n_items:
        raise ArtifactError(f"manifest {manifest.version}: {len(item_index)} item ids for n_items={manifest.n_items}")
    if popularity.shape != (manifest.n_items,) or popularity.dtype.kind not in "iu" or (popularity < 0).any():
        raise ArtifactError(f"manifest {manifest.version}: popularity must be {manifest.n_items} non-negative ints")


def member_artifacts(artifact: ModelArtifact) -> list[ModelArtifact]:
    """A blend's members as artifacts of their own (same directory, catalogue and popularity), in member order;
    ``[artifact]`` for a single-family one."""
    if artifact.manifest.model_family != "blend":
        return [artifact]
    members = []
    for number, fields in enumerate(member_fields(artifact.manifest.hyperparameters)):
        manifest = artifact.manifest.model_copy(update={
            "model_family": fields["family"], "hyperparameters": fields["hyperparameters"],
            "hidden_size": fields["hidden_size"], "n_layers": fields["n_layers"]})
        members.append(ModelArtifact(artifact.path, manifest, member_part(artifact.weights, number),
                                     artifact.item_index, artifact.popularity))
    return members
