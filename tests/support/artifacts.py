"""Model artifacts for tests and benchmarks: one random-artifact builder (any family), a quick trained model,
loading."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelkit import gru4rec, sasrec
from modelkit.artifact import load_artifact, write_artifact
from modelkit.blend import flat_members, prefixed
from modelkit.item_index import ItemIndex
from schemas import ModelManifest
from schemas.manifest import TrainingWindow
from stream_worker.serving import ServingModel
from tests.support.workloads import RSC15_DIR

if TYPE_CHECKING:
    from offline.blend_params import BlendParams

SASREC_MAX_LEN, SASREC_HEADS = 50, 1  # random SASRec artifacts unless told otherwise


def _gru4rec_weights(n_items: int, layers: Sequence[int], seed: int, _: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return gru4rec.initial_weights(n_items, tuple(layers), seed=seed)


def _sasrec_weights(n_items: int, layers: Sequence[int], seed: int, hyper: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if len(set(layers)) != 1:
        raise ValueError(f"sasrec blocks all have the hidden size: layers {list(layers)}")
    return sasrec.initial_weights(n_items, layers[0], len(layers), int(hyper["max_len"]), seed=seed)


_INITIAL_WEIGHTS: Mapping[str, Callable[[int, Sequence[int], int, Mapping[str, Any]], dict[str, np.ndarray]]] = {
    "gru4rec": _gru4rec_weights, "sasrec": _sasrec_weights,
}


def default_hyperparameters(family: str, layers: Sequence[int], max_len: int = SASREC_MAX_LEN,
                            n_heads: int = SASREC_HEADS) -> dict[str, Any]:
    """The manifest hyperparameters a family's loader needs: GRU4REC its layers, SASRec max_len and n_heads."""
    if family == "sasrec":
        return {"max_len": max_len, "n_heads": n_heads}
    return {"layers": list(layers)}


def random_artifact(
    models_dir: Path,
    version: str = "v1",
    *,
    family: str = "gru4rec",
    items: Sequence[str] | int = 40,
    layers: Sequence[int] = (8,),
    max_len: int = SASREC_MAX_LEN,
    n_heads: int = SASREC_HEADS,
    seed: int = 0,
    noise: float = 0.0,
    noise_seed: int | None = None,
    popularity: np.ndarray | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    created_at: float = 0.0,
    window: tuple[float, float] = (0.0, 1.0),
    make_current: bool = True,
) -> Path:
    """Write an artifact of ``family`` with random weights as ``models_dir/<version>`` (and ``current`` if asked).

    ``layers`` are the hidden sizes of the layers: GRU4REC's GRU layers, or SASRec's blocks (all the same size;
    ``max_len`` and ``n_heads`` are SASRec's window length and attention heads). Weights are the family's
    ``initial_weights(..., seed)``, plus N(0, ``noise``) from ``default_rng(noise_seed)`` (default: ``seed``)
    when ``noise`` > 0 (non-zero biases, so rows can be told apart). ``items`` are the item ids, or a count of
    ids ``i0``, ``i1``, ...; ``popularity`` defaults to ``n_items-1 .. 0`` (the first items most popular);
    ``hyperparameters`` default to what the family's loader needs (``default_hyperparameters``).
    """
    if family not in _INITIAL_WEIGHTS:
        raise ValueError(f"no random weights for family {family!r} (known: {', '.join(sorted(_INITIAL_WEIGHTS))})")
    item_ids = [f"i{n}" for n in range(items)] if isinstance(items, int) else list(items)
    n_items = len(item_ids)
    hyper = (dict(hyperparameters) if hyperparameters is not None
             else default_hyperparameters(family, layers, max_len, n_heads))
    weights = _INITIAL_WEIGHTS[family](n_items, layers, seed, {"max_len": max_len, **hyper})
    if noise > 0:
        rng = np.random.default_rng(seed if noise_seed is None else noise_seed)
        weights = {k: (v + rng.normal(0, noise, v.shape)).astype(np.float32) for k, v in weights.items()}
    manifest = ModelManifest(
        version=version, model_family=family, created_at=created_at,
        training_window=TrainingWindow(start=window[0], end=window[1]), data_digest="0" * 64,
        hyperparameters=hyper, n_items=n_items, hidden_size=layers[-1], n_layers=len(layers),
    )
    if popularity is None:
        popularity = np.arange(n_items)[::-1].copy()
    return write_artifact(models_dir, manifest, weights, ItemIndex(item_ids), popularity, make_current)


def random_rsc15_artifact(models_dir: Path, family: str, version: str, data_dir: Path = RSC15_DIR, *,
                          layers: Sequence[int] = (64, 64), seed: int = 0, noise: float = 0.05,
                          make_current: bool = True) -> Path:
    """A random ``family`` artifact over the items of YOOCHOOSE train_tr (the catalogue and popularity a model
    trained on it has, as ``train_model``): a stand-in for a trained model of a family that has no training yet."""
    from offline.loaders import load_events

    frame = load_events(data_dir / "yoochoose-clicks-100k_train_tr.txt", "session-tsv")
    index = ItemIndex.from_events(frame["item_id"])
    popularity = np.bincount(index.lookup(frame["item_id"].to_numpy()), minlength=len(index))
    return random_artifact(models_dir, version, family=family, items=index.ids.tolist(), layers=layers, seed=seed,
                           noise=noise, popularity=popularity, make_current=make_current)


def random_rsc15_blend_artifact(models_dir: Path, version: str, params: BlendParams | None = None,
                                data_dir: Path = RSC15_DIR, make_current: bool = True) -> Path:
    """A blend of ``params`` (default: the served default's shape) over the items of YOOCHOOSE train_tr: neural
    members with random weights (``initial_weights`` of seed = member number), the V-SKNN member indexing
    train_tr as training would. For serving costs and worker tests, without the minutes of neural training."""
    from offline.blend_params import BlendParams, member_family, member_layers
    from offline.loaders import load_events
    from offline.pipeline import TrainedModel, build_manifest, to_sessions
    from offline.training_report import TrainingReport
    from offline.vsknn_params import VSKNNParams
    from offline.vsknn_train import VSKNNTrainer

    params = params or BlendParams()
    frame = load_events(data_dir / "yoochoose-clicks-100k_train_tr.txt", "session-tsv")
    index = ItemIndex.from_events(frame["item_id"])
    sessions = to_sessions(frame, index)
    counts = np.bincount(sessions.item_idx, minlength=len(index))
    weights: dict[str, np.ndarray] = {}
    members = []
    for number, (member, share) in enumerate(params.members()):
        family = member_family(member)
        if isinstance(member, VSKNNParams):
            trainer = VSKNNTrainer(member, counts)
            trainer.fit(sessions, progress=False)
            member_weights, hyper = trainer.weights(), trainer.hyperparameters()
        else:
            hyper = member.flat()
            layers = [member.hidden_size] * member_layers(member)
            member_weights = _INITIAL_WEIGHTS[family](len(index), layers, number, hyper)
        weights.update(prefixed(member_weights, number))
        members.append((family, share, member.hidden_size, member_layers(member), hyper))
    model = TrainedModel("blend", flat_members(members, params.combine), weights, index, counts, TrainingReport())
    manifest = build_manifest(frame, params, model, {}).model_copy(update={"version": version})
    return write_artifact(models_dir, manifest, weights, index, counts, make_current)


def train_model(models_dir: Path, data_dir: Path = RSC15_DIR) -> Path:
    """GRU4REC on YOOCHOOSE train_tr with n_epochs=2 (as the e2e tests), published as ``models_dir/current``."""
    from offline.hyperparams import GRU4RecParams
    from offline.loaders import load_events
    from offline.pipeline import train_version

    frame = load_events(data_dir / "yoochoose-clicks-100k_train_tr.txt", "session-tsv")
    path, _, _ = train_version(frame, GRU4RecParams(n_epochs=2), models_dir, progress=False)
    return path


def load_model(models_dir: Path) -> ServingModel:
    """The serving model of ``models_dir/current``."""
    return ServingModel(load_artifact(models_dir / "current"))
