"""Warm start: carry a previous model version's weights over to a new item index (catalogue growth)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from modelkit import sasrec
from modelkit.artifact import ModelArtifact, member_artifacts
from modelkit.blend import prefixed
from modelkit.gru4rec import WEIGHT_BIAS, WEIGHT_EMBEDDING, initial_weights, layer_weight_names
from modelkit.item_index import ItemIndex
from offline.blend_params import BlendParams, member_family
from offline.hyperparams import GRU4RecParams
from offline.sasrec_params import SASRecParams
from offline.vsknn_params import VSKNNParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CatalogueChange:
    """How the item catalogue changed from the previous version to the new index."""

    kept: int  # items of the previous version still in the catalogue (their rows are carried over)
    added: int  # items new since the previous version (fresh rows)
    dropped: int  # items of the previous version no longer in the catalogue


def warm_start_index(previous: ItemIndex, window_items: Iterable[str], keep_missing_items: bool = False) -> ItemIndex:
    """Item index of a warm-started candidate trained on ``window_items``.

    Items of the previous version that occur in the window come first, in their previous order, then items
    new in the window, in order of first appearance. Previous items absent from the window are dropped
    (default: the model should not recommend items nobody clicked during the whole window, e.g. sold out or
    delisted), or with ``keep_missing_items`` kept at their previous position (rows and biases unchanged,
    since training never touches them: they are neither targets nor sampled negatives with zero clicks).
    """
    window = dict.fromkeys(window_items)
    if keep_missing_items:
        return previous.extended(window)
    kept = [item for item in previous.ids.tolist() if item in window]
    return ItemIndex([*kept, *(item for item in window if item not in previous)])


def catalogue_change(previous: ItemIndex, new_index: ItemIndex) -> CatalogueChange:
    """Counts of kept, added and dropped items between two indices."""
    kept = int((previous.lookup(new_index.ids) >= 0).sum())
    return CatalogueChange(kept=kept, added=len(new_index) - kept, dropped=len(previous) - kept)


def model_layers(weights: dict[str, np.ndarray]) -> tuple[int, ...]:
    """GRU layer sizes of a weight dict (from the recurrent matrices' shapes)."""
    sizes: list[int] = []
    while layer_weight_names(len(sizes))[1] in weights:
        sizes.append(int(weights[layer_weight_names(len(sizes))[1]].shape[0]))
    return tuple(sizes)


def warm_start_weights(
    previous: ModelArtifact, new_index: ItemIndex, params: GRU4RecParams, seed: int
) -> dict[str, np.ndarray]:
    """Initial weights for ``new_index`` from ``previous``: learned rows for known items, fresh rows for new ones.

    Items present in both keep their embedding row and bias bit-exactly; items unknown to ``previous`` get
    the rows a from-scratch run with ``seed`` would give them (``initial_weights`` over the new index: uniform
    +-sqrt(6/(n_items+hidden)), bias 0); GRU weights are copied. Items of ``previous`` absent from
    ``new_index`` are dropped (choose them with ``warm_start_index``). Raises ValueError when the previous
    model's layer sizes differ from ``params.layers``.
    """
    old = previous.weights
    layers = model_layers(old)
    if layers != tuple(params.layers):
        raise ValueError(
            f"cannot warm-start from model {previous.version}: its layers {list(layers)} differ from the "
            f"requested {list(params.layers)}; train from scratch or keep the layer sizes"
        )
    if old[WEIGHT_EMBEDDING].shape[1] != params.hidden_size:
        raise ValueError(f"cannot warm-start from model {previous.version}: embedding width "
                         f"{old[WEIGHT_EMBEDDING].shape[1]} differs from hidden size {params.hidden_size}")
    if len(new_index) == 0:
        raise ValueError("cannot warm-start onto an empty item index")
    fresh = initial_weights(len(new_index), params.layers, seed)
    rows = previous.item_index.lookup(new_index.ids)  # (n_new,) previous row or -1
    known = rows >= 0
    embedding = fresh[WEIGHT_EMBEDDING]
    bias = fresh[WEIGHT_BIAS]
    embedding[known] = np.asarray(old[WEIGHT_EMBEDDING], dtype=np.float32)[rows[known]]
    bias[known] = np.asarray(old[WEIGHT_BIAS], dtype=np.float32)[rows[known]]
    weights = {WEIGHT_EMBEDDING: embedding, WEIGHT_BIAS: bias}
    for layer in range(len(layers)):
        for name in layer_weight_names(layer):
            weights[name] = np.array(old[name], dtype=np.float32, copy=True)
    return weights


def sasrec_warm_start_weights(
    previous: ModelArtifact, new_index: ItemIndex, params: SASRecParams, seed: int
) -> dict[str, np.ndarray] | None:
    """Initial SASRec weights for ``new_index`` from the SASRec version ``previous``, or None (logged) when its
    sizes differ from ``params`` (hidden size, max_len, blocks or heads): then the candidate trains from scratch.

    Items present in both keep their embedding row bit-exactly; items unknown to ``previous`` get the rows a
    from-scratch run with ``seed`` would give them; positions, blocks and the final norm are copied.
    """
    if len(new_index) == 0:
        raise ValueError("cannot warm-start onto an empty item index")
    old, hyper = previous.weights, previous.manifest.hyperparameters
    before = (old[sasrec.WEIGHT_ITEMS].shape[1], hyper.get("max_len"), previous.manifest.n_layers, hyper.get("n_heads"))
    wanted = (params.hidden_size, params.max_len, params.n_blocks, params.n_heads)
    if before != wanted:
        names = ("hidden size", "max_len", "blocks", "heads")
        differences = ", ".join(f"{n} {b} -> {w}" for n, b, w in zip(names, before, wanted, strict=True) if b != w)
        log.info("not warm-starting from %s (%s): training from scratch", previous.version, differences)
        return None
    weights = sasrec.initial_weights(len(new_index), params.hidden_size, params.n_blocks, params.max_len, seed)
    rows = previous.item_index.lookup(new_index.ids)  # (n_new,) previous row or -1
    known = rows >= 0
    weights[sasrec.WEIGHT_ITEMS][known] = np.asarray(old[sasrec.WEIGHT_ITEMS], dtype=np.float32)[rows[known]]
    for name in weights:
        if name != sasrec.WEIGHT_ITEMS:
            weights[name] = np.array(old[name], dtype=np.float32, copy=True)
    return weights


def warm_start_from(
    previous: ModelArtifact, new_index: ItemIndex, params: GRU4RecParams | SASRecParams | BlendParams, seed: int
) -> dict[str, np.ndarray] | None:
    """Initial weights of a candidate of ``params``' family warm-started from ``previous``, or None (logged):
    train from scratch, when ``previous`` is another family or (SASRec) has other sizes. A GRU4REC of other
    layer sizes raises ValueError (see ``warm_start_weights``).

    Blends go member by member: run ``i`` of a blend candidate starts from member ``i`` of a blend ``previous``
    of the same family (else from ``previous``'s first model of its family), under the ``m{i}.`` prefix; a run
    with nothing to start from trains from scratch, and a V-SKNN member indexes the window anew. A single-family
    candidate starts from the first model of its family in ``previous``.
    """
    sources = member_artifacts(previous)
    if not isinstance(params, BlendParams):
        return _warm_start_run(_source(sources, params, 0), new_index, params, seed)
    initial: dict[str, np.ndarray] = {}
    for number, (run, _) in enumerate(params.members()):
        if isinstance(run, VSKNNParams):
            continue  # an index of the window's sessions: built anew
        weights = _warm_start_run(_source(sources, run, number), new_index, run, run.seed) or {}
        initial.update(prefixed(weights, number))
    return initial or None


def _source(sources: list[ModelArtifact], params: GRU4RecParams | SASRecParams, number: int) -> ModelArtifact:
    """The model run ``number`` of ``params``' family warm-starts from: ``sources[number]`` when of that family,
    else the first source of that family, else the first source (which ``_warm_start_run`` turns down)."""
    family = member_family(params)
    if number < len(sources) and sources[number].manifest.model_family == family:
        return sources[number]
    return next((source for source in sources if source.manifest.model_family == family), sources[0])


def _warm_start_run(
    previous: ModelArtifact, new_index: ItemIndex, params: GRU4RecParams | SASRecParams, seed: int
) -> dict[str, np.ndarray] | None:
    family = member_family(params)
    if previous.manifest.model_family != family:
        log.info("not warm-starting from %s (a %s model) for a %s candidate: training from scratch",
                 previous.version, previous.manifest.model_family, family)
        return None
    if isinstance(params, SASRecParams):
        return sasrec_warm_start_weights(previous, new_index, params, seed)
    return warm_start_weights(previous, new_index, params, seed)
