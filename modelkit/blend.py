"""A blend of model families: member states side by side, the members' next-click probabilities combined."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from modelkit.family import Family, SessionModel

MEMBERS = "members"  # hyperparameter: how many members (0..n-1)
COMBINE = "combine"  # hyperparameter: how member probabilities are combined (COMBINATIONS)
COMBINATIONS = ("probability", "log-probability")
VOTE_FAMILIES = frozenset({"vsknn"})  # scores are non-negative votes (probability: vote / row sum), not logits
VOTE_FLOOR = 1e-4  # log-probability of a vote member: log(p + VOTE_FLOOR), as items without a vote have p = 0
MEMBER_FIELDS = ("family", "weight", "hidden_size", "n_layers")  # per member: "m{i}.family", "m{i}.weight", ...


def member_prefix(member: int) -> str:
    """Prefix of member ``member``'s weight names and hyperparameters in a blend artifact ("m0.", "m1.", ...)."""
    return f"m{member}."


def flat_members(members: Sequence[tuple[str, float, int, int, Mapping[str, Any]]], combine: str = "probability"
                 ) -> dict[str, Any]:
    """The blend's manifest hyperparameters from (family, weight, hidden_size, n_layers, hyperparameters) per member.

    A manifest's hyperparameters are flat, so member ``i``'s fields become ``m{i}.family``, ``m{i}.weight``, ...
    and its own hyperparameters ``m{i}.<name>``:

    >>> flat_members([("gru4rec", 0.5, 100, 1, {"layers": [100]})])  # doctest: +NORMALIZE_WHITESPACE
    {'members': 1, 'combine': 'probability', 'm0.family': 'gru4rec', 'm0.weight': 0.5, 'm0.hidden_size': 100,
     'm0.n_layers': 1, 'm0.layers': [100]}
    """
    flat: dict[str, Any] = {MEMBERS: len(members), COMBINE: combine}
    for number, (family, weight, hidden_size, n_layers, hyperparameters) in enumerate(members):
        flat.update(prefixed(dict(zip(MEMBER_FIELDS, (family, weight, hidden_size, n_layers), strict=True)), number))
        flat.update(prefixed(hyperparameters, number))
    return flat


def member_part(values: Mapping[str, Any], member: int) -> dict[str, Any]:
    """Member ``member``'s entries of a blend's weights or hyperparameters, without the prefix."""
    prefix = member_prefix(member)
    return {name[len(prefix):]: value for name, value in values.items() if name.startswith(prefix)}


def prefixed(values: Mapping[str, Any], member: int) -> dict[str, Any]:
    """One member's weights or hyperparameters under its prefix (the inverse of ``member_part``).

    >>> prefixed({"item_bias": 0}, 1)
    {'m1.item_bias': 0}
    """
    prefix = member_prefix(member)
    return {prefix + name: value for name, value in values.items()}


class BlendNumpy:
    """A ``SessionModel`` over several member models of one catalogue.

    A session's state is the members' states concatenated; a click steps every member. Each member's scores
    become next-click probabilities (logits: softmax; votes of a ``VOTE_FAMILIES`` member: divided by their sum),
    so members whose raw scores live on different scales are comparable; an item's score is then the weighted
    mean of its probabilities (``probability``) or of their logarithms (``log-probability``, a weighted
    geometric mean: every member must find the item likely), with weights normalised to sum to 1.

    >>> from modelkit.gru4rec import GRU4RecNumpy, initial_weights
    >>> members = [GRU4RecNumpy(initial_weights(n_items=5, layers=(4,), seed=seed)) for seed in (0, 1)]
    >>> blend = BlendNumpy(members, [0.5, 0.5])
    >>> blend.state_size, blend.scores(blend.step(blend.initial_state(2), np.array([3, 1]))).sum(axis=1).round(3)
    (8, array([1., 1.], dtype=float32))
    """

    family = "blend"

    def __init__(self, members: Sequence[SessionModel], weights: Sequence[float], combine: str = "probability"
                 ) -> None:
        if combine not in COMBINATIONS:
            raise ValueError(f"unknown blend combination {combine!r}; expected one of {COMBINATIONS}")
        if not members or len(members) != len(weights):
            raise ValueError("a blend needs one weight per member and at least one member")
        if len({member.n_items for member in members}) != 1:
            raise ValueError("the members of a blend must score the same catalogue")
        if min(weights) < 0 or sum(weights) <= 0:
            raise ValueError("blend weights must be non-negative, at least one positive")
        self.members = list(members)
        self.combine = combine
        total = float(sum(weights))
        self.weights = [np.float32(weight / total) for weight in weights]
        self.n_items = members[0].n_items
        self.bounds = np.cumsum([0, *(member.state_size for member in members)])  # member i: [bounds[i], bounds[i+1])
        self.state_size = int(self.bounds[-1])
        self.window = max(member.window for member in members)  # the longest windowed member's

    def _parts(self, states: np.ndarray) -> list[np.ndarray]:  # (batch, state_size) -> each member's columns
        return [states[:, start:stop] for start, stop in zip(self.bounds[:-1], self.bounds[1:], strict=True)]

    def initial_state(self, n_sessions: int) -> np.ndarray:  # (n_sessions, state_size)
        return np.concatenate([member.initial_state(n_sessions) for member in self.members], axis=1)

    def step(self, states: np.ndarray, items: np.ndarray) -> np.ndarray:  # (batch, state_size), (batch,) -> same
        return np.concatenate([member.step(part, items) for member, part in zip(self.members, self._parts(states),
                                                                                 strict=True)], axis=1)

    def scores(self, states: np.ndarray) -> np.ndarray:  # (batch, state_size) -> (batch, n_items)
        blended = np.zeros((len(states), self.n_items), np.float32)
        for member, weight, part in zip(self.members, self.weights, self._parts(states), strict=True):
            if weight > 0:  # a member of weight 0 (fitted out) is still stepped: its state stays valid
                blended += weight * comparable_scores(member.scores(part), member.family, self.combine)
        return blended


def comparable_scores(scores: np.ndarray, family: str, combine: str) -> np.ndarray:
    """One member's scores (batch, n_items) as what a blend adds up: next-click probabilities (``probability``)
    or their logarithms (``log-probability``), float32, in a new array.

    >>> comparable_scores(np.array([[0.0, 3.0, 1.0]]), "vsknn", "probability")
    array([[0.  , 0.75, 0.25]], dtype=float32)
    """
    own = np.array(scores, dtype=np.float32)  # (batch, n_items), a copy of our own
    votes = family in VOTE_FAMILIES
    return _probabilities_(own, votes) if combine == "probability" else _log_probabilities_(own, votes)


def _probabilities_(scores: np.ndarray, votes: bool) -> np.ndarray:
    """Next-click probabilities from logits (softmax) or non-negative votes (share of the row's votes; a row
    without any stays 0), over the last axis, in place."""
    if votes:
        scores /= np.maximum(scores.sum(axis=-1, keepdims=True), np.finfo(np.float32).tiny)
        return scores
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return scores


def _log_probabilities_(scores: np.ndarray, votes: bool) -> np.ndarray:
    """Log of ``_probabilities_`` (votes: of the probability plus ``VOTE_FLOOR``), in place."""
    if votes:
        return np.log(_probabilities_(scores, votes) + np.float32(VOTE_FLOOR), out=scores)
    scores -= scores.max(axis=-1, keepdims=True)
    scores -= np.log(np.exp(scores).sum(axis=-1, keepdims=True))
    return scores


def member_fields(hyperparameters: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each member's fields (family, weight, hidden_size, n_layers, hyperparameters); ValueError when malformed."""
    count = hyperparameters.get(MEMBERS)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError("blend needs a positive integer hyperparameter members")
    members = []
    for number in range(count):
        fields = member_part(hyperparameters, number)
        family, weight = fields.pop("family", None), fields.pop("weight", None)
        hidden_size, n_layers = fields.pop("hidden_size", None), fields.pop("n_layers", None)
        if not isinstance(family, str) or not isinstance(weight, int | float) or weight < 0 \
                or not isinstance(hidden_size, int) or not isinstance(n_layers, int):
            raise ValueError(f"blend member {number} needs family, a non-negative weight, hidden_size and n_layers")
        members.append({"family": family, "weight": float(weight), "hidden_size": hidden_size,
                        "n_layers": n_layers, "hyperparameters": fields})
    return members


def combination(hyperparameters: Mapping[str, Any]) -> str:
    """The blend's ``combine`` hyperparameter (blends written before it: probability); ValueError if unknown."""
    combine = hyperparameters.get(COMBINE, "probability")
    if combine not in COMBINATIONS:
        raise ValueError(f"blend combine must be one of {COMBINATIONS}")
    return str(combine)


def blend_family(member_families: Mapping[str, Family]) -> Family:
    """The blend family over ``member_families`` (a blend's members may not be blends).

    A blend artifact's manifest names the number of members in ``n_layers`` and the largest member hidden size in
    ``hidden_size``; its weights are the members' weights under their ``m{i}.`` prefix.
    """

    def member_family(name: str) -> Family:
        if name not in member_families:
            raise ValueError(f"unknown blend member family {name!r} (known: {', '.join(sorted(member_families))})")
        return member_families[name]

    def weight_shapes(n_items: int, hidden_size: int, n_layers: int, hyperparameters: Mapping[str, Any]
                      ) -> dict[str, tuple[int, ...]]:
        members = member_fields(hyperparameters)
        combination(hyperparameters)
        if n_layers != len(members) or hidden_size != max(member["hidden_size"] for member in members):
            raise ValueError("a blend's n_layers must be its member count and hidden_size its largest member's")
        shapes: dict[str, tuple[int, ...]] = {}
        for number, member in enumerate(members):
            member_shapes = member_family(member["family"]).weight_shapes(
                n_items, member["hidden_size"], member["n_layers"], member["hyperparameters"])
            shapes.update(prefixed(member_shapes, number))
        return shapes

    def build(weights: Mapping[str, np.ndarray], hyperparameters: Mapping[str, Any]) -> BlendNumpy:
        members = member_fields(hyperparameters)
        models = [member_family(member["family"]).build(member_part(weights, number), member["hyperparameters"])
                  for number, member in enumerate(members)]
        return BlendNumpy(models, [member["weight"] for member in members], combination(hyperparameters))

    def index_weights(hyperparameters: Mapping[str, Any]) -> frozenset[str]:
        return frozenset(member_prefix(number) + name for number, member in enumerate(member_fields(hyperparameters))
                         for name in member_family(member["family"]).index_weights(member["hyperparameters"]))

    return Family("blend", weight_shapes, build, index_weights)
