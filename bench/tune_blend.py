"""Score blends of GRU4REC, SASRec and vote members (V-SKNN, sequential rules, a STAN-like kNN): tuned on the
last two days of train_tr, then run once on train_valid.

Members. GRU4REC and SASRec with their default hyperparameters and seeds ``--seeds`` (the first: the reference).
Vote members score items by non-negative votes: ``vsknn`` (offline.baselines.VSKNNScorer defaults: k 100, sample
1000, div, cosine, idf); ``sr``, sequential rules (SequentialRulesScorer defaults: steps 10, div, pruning 20);
``stan-l<L>[-after]``, a position-aware session kNN in the spirit of STAN (Garg et al., SIGIR 2019; ``STANScorer``):
V-SKNN's neighbours and similarities sim(p, n), but neighbour n votes for item i with
sim(p, n) * exp(-|pos_n(i) - m_n| / L), times V-SKNN's idf factor of i, where m_n is the position in n of n's last
click whose item is in the prefix p and pos_n(i) the occurrence of i in n nearest m_n; ``-after``: only items
occurring after m_n in n vote (pos_n(i) > m_n).

Search (the default run). Tuning day d (D1 = the last day of train_tr, D2 = the day before, ... ``--days``):
train on the sessions of train_tr whose last click falls before day d, test on the sessions whose last click
falls in day d (next-click, restricted to that training catalogue; later sessions are left out). On each day
every member is trained once (neural weights kept in ``--weights-dir``) and evaluated once, recording its score
rows; every blend is then scored from those rows. A blend (``Config``) is a normalisation (``logprob``: neural
log-softmax, a vote member log(votes / rowsum + VOTE_FLOOR), a weighted product of experts; ``prob``: softmax,
votes / rowsum, a mixture) x the first k seeds of both neural families (k = 1..3; a family's seeds share its
weight equally) x GRU4REC's part of the neural share (GRU_FRACTIONS: .5, .7) x a vote part (VOTE_PARTS, shares of
the whole blend): V-SKNN .2 or .3 (round 2's kind), SR .1 or .2, V-SKNN .2 + SR .1, each STAN variant (L in
1, 2, 4; after-only off, on) .2 or .3, each STAN variant .2 + SR .1: 2 x 3 x 2 x 23 = 276 blends.

Choice, fixed before looking at any figure of this search: figures are pooled over all predictions of all tuning
days; gains are over the GRU4REC default with the reference seed (same days). Maximise min(dRecall@20, dMRR@20);
among the blends within NEAR (.002) of that best blend on both pooled metrics (keeping only those that gain
TARGET_GAIN, +1.0 point, on both metrics on every day separately, if any do), take the fewest seeds per neural
family, then the fewest members, then the fewest members not served yet (SR, STAN; GRU4REC, SASRec and V-SKNN
are), then GRU4REC:SASRec closest to even, then the smallest vote share, then the largest pooled smaller gain.
The choice is checked through ``evaluate`` with ``BlendScorer`` on every day; ``--final CONFIG`` then trains on
train_tr and evaluates CONFIG, its members, its per-family seed averages and the ``--compare`` configs (default:
round 2's choice) once on train_valid.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modelkit.families import family_named  # noqa: E402
from modelkit.item_index import ItemIndex  # noqa: E402
from offline.baselines import SequentialRulesScorer, VSKNNScorer  # noqa: E402
from offline.evaluate import ModelScorer, SessionScorer, evaluate  # noqa: E402
from offline.hyperparams import GRU4RecParams  # noqa: E402
from offline.loaders import load_events  # noqa: E402
from offline.metrics import metrics_from_ranks, target_ranks  # noqa: E402
from offline.pipeline import restrict_to_catalogue, to_sessions  # noqa: E402
from offline.sasrec_params import SASRecParams  # noqa: E402
from offline.session_arrays import SessionArrays  # noqa: E402

log = logging.getLogger("tune_blend")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rsc15-100k"
DAY = 86400.0
SEEDS = (42, 43, 44)  # per neural family; the first is the reference (the GRU4REC default)
NORMALISATIONS = ("logprob", "prob")
GRU_FRACTIONS = (0.5, 0.7)  # GRU4REC's part of the neural (non-vote) share
VOTE_FLOOR = 1e-4  # logprob: log(p + floor) of a vote member's distribution, whose zeros would be -inf
TARGET_GAIN = 0.01  # +1.0 point Recall@20 and MRR@20 over the GRU4REC default
NEAR = 0.002  # a simpler config within this much of the best on both pooled metrics is preferred
CUTOFFS = (20,)
TABLE_ROWS = 40
NEURAL_PARAMS: dict[str, GRU4RecParams | SASRecParams] = {"gru4rec": GRU4RecParams(), "sasrec": SASRecParams()}
STAN_PATTERN = re.compile(r"stan-l(\d+(?:\.\d+)?)(-after)?")
STAN_LAMBDAS = (1.0, 2.0, 4.0)
SERVED = frozenset({"gru4rec", "sasrec", "vsknn"})  # families a served blend can hold today
ROUND2 = "logprob:gru4rec@42+sasrec@42+vsknn:gru4rec=0.56,sasrec=0.24,vsknn=0.2"  # round 2's choice


def stan_family(lambda3: float, after_only: bool) -> str:
    return f"stan-l{lambda3:g}" + ("-after" if after_only else "")


def stan_settings(family: str) -> tuple[float, bool]:
    """(lambda3, after_only) of a ``stan-l<L>[-after]`` family name."""
    match = STAN_PATTERN.fullmatch(family)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"{family!r} is no STAN family (stan-l<L>[-after], L > 0)")
    return float(match.group(1)), match.group(2) is not None


def is_vote(family: str) -> bool:
    return family in ("vsknn", "sr") or STAN_PATTERN.fullmatch(family) is not None


STAN_FAMILIES = tuple(stan_family(lambda3, after) for lambda3 in STAN_LAMBDAS for after in (False, True))
VOTE_PARTS: tuple[dict[str, float], ...] = (  # vote members and their shares of the whole blend
    {"vsknn": 0.2}, {"vsknn": 0.3}, {"sr": 0.1}, {"sr": 0.2}, {"vsknn": 0.2, "sr": 0.1},
    *({family: share} for family in STAN_FAMILIES for share in (0.2, 0.3)),
    *({family: 0.2, "sr": 0.1} for family in STAN_FAMILIES))


def short_family(family: str) -> str:
    if STAN_PATTERN.fullmatch(family):
        lambda3, after = stan_settings(family)
        return f"stan{lambda3:g}" + ("a" if after else "")
    return {"gru4rec": "gru", "sasrec": "sas", "vsknn": "vsk"}.get(family, family)


@dataclass(frozen=True, order=True)
class Member:
    """One model of a blend: a family trained with its default hyperparameters and a seed (vote members: none)."""

    family: str
    seed: int = 0

    def __str__(self) -> str:
        return self.family if is_vote(self.family) else f"{self.family}@{self.seed}"

    @classmethod
    def parse(cls, text: str) -> Member:
        family, _, seed = text.partition("@")
        if is_vote(family) and not seed:
            if family.startswith("stan"):
                stan_settings(family)  # validates lambda3
            return cls(family)
        if family not in NEURAL_PARAMS or not seed.lstrip("-").isdigit():
            raise ValueError(f"member {text!r}: expected gru4rec@SEED, sasrec@SEED, vsknn, sr or stan-l<L>[-after]")
        return cls(family, int(seed))


@dataclass(frozen=True)
class Config:
    """A blend: the normalisation, the members, each family's total weight (split evenly over its seeds).

    Written ``NORM:MEMBERS[:WEIGHTS]``, e.g. ``prob:gru4rec@42+sasrec@42:gru4rec=0.5,sasrec=0.5``. NORM makes
    each member's score row comparable (``normalise``); MEMBERS are ``family@seed`` (vote members: no seed);
    WEIGHTS default to equal family shares.
    """

    norm: str
    members: tuple[Member, ...]
    family_weights: tuple[tuple[str, float], ...]

    @property
    def weights(self) -> list[float]:
        """Each member's weight, in member order."""
        shares = dict(self.family_weights)
        return [shares[m.family] / self.count(m.family) for m in self.members]

    def count(self, family: str) -> int:
        return sum(m.family == family for m in self.members)

    def share(self, family: str) -> float:
        return dict(self.family_weights).get(family, 0.0)

    @property
    def n_seeds(self) -> int:
        """The most seeds of one neural family."""
        return max(self.count(family) for family in NEURAL_PARAMS)

    @property
    def n_unserved(self) -> int:
        """Members of families no served blend holds yet (SR, STAN)."""
        return sum(m.family not in SERVED for m in self.members)

    @property
    def vote_share(self) -> float:
        return sum(weight for family, weight in self.family_weights if is_vote(family))

    @property
    def gru_fraction(self) -> float:
        """GRU4REC's part of the neural share."""
        neural = self.share("gru4rec") + self.share("sasrec")
        return self.share("gru4rec") / neural if neural else 0.0

    def __str__(self) -> str:
        weights = ",".join(f"{family}={weight:g}" for family, weight in self.family_weights)
        return f"{self.norm}:{'+'.join(map(str, self.members))}:{weights}"

    @classmethod
    def of(cls, norm: str, members: Sequence[Member], shares: dict[str, float] | None = None) -> Config:
        families = list(dict.fromkeys(m.family for m in members))
        shares = shares or {family: 1.0 / len(families) for family in families}
        if set(shares) != set(families):
            raise ValueError(f"weights name families {sorted(shares)}, the members are {sorted(families)}")
        if norm not in NORMALISATIONS:
            raise ValueError(f"unknown normalisation {norm!r}; expected one of {NORMALISATIONS}")
        if len(set(members)) != len(members) or not members:
            raise ValueError("members must be distinct and at least one")
        return cls(norm, tuple(members), tuple((family, float(shares[family])) for family in families))

    @classmethod
    def parse(cls, text: str) -> Config:
        """``NORM:MEMBERS[:WEIGHTS]`` as printed by ``str``."""
        norm, _, rest = text.partition(":")
        members_text, _, weights_text = rest.partition(":")
        members = [Member.parse(part) for part in members_text.split("+") if part]
        shares = None
        if weights_text:
            pairs = [part.split("=", 1) for part in weights_text.split(",")]
            shares = {family: float(weight) for family, weight in pairs}
        return cls.of(norm, members, shares)

    @property
    def label(self) -> str:
        """The config, or just the member for a single model (every normalisation ranks it alike)."""
        return str(self.members[0]) if len(self.members) == 1 else str(self)

    @property
    def short(self) -> str:
        """A compact label for tables: norm, seeds per family, family shares."""
        if len(self.members) == 1:
            return str(self.members[0])
        shares = " ".join(f"{short_family(family)}={weight:.3g}" for family, weight in self.family_weights)
        seeds = "/".join(str(self.count(family)) for family in NEURAL_PARAMS if self.count(family))
        return f"{self.norm:<8}x{seeds:<4}{shares}"


def normalise(scores: np.ndarray, family: str, norm: str) -> np.ndarray:
    """One member's score rows (batch, n_items) made comparable across members (float32, row by row).

    ``prob``: softmax (the blend is a mixture); ``logprob``: log-softmax (a weighted product of experts).
    A vote member's votes are divided by their row sum instead of a softmax (under logprob: log with a floor).
    """
    scores = np.asarray(scores, dtype=np.float32)
    if is_vote(family):
        total = scores.sum(axis=1, keepdims=True)
        scaled = np.divide(scores, total, out=np.zeros_like(scores), where=total > 0)
        return np.log(scaled + np.float32(VOTE_FLOOR)) if norm == "logprob" else scaled
    shifted = scores - scores.max(axis=1, keepdims=True)
    if norm == "logprob":
        return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    probabilities = np.exp(shifted)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return probabilities


def combine(parts: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Weighted sum of normalised score rows, always in member order (cached and streamed blends agree)."""
    total = parts[0] * np.float32(weights[0])
    for part, weight in zip(parts[1:], weights[1:], strict=True):
        total += part * np.float32(weight)
    return total


class BlendScorer:
    """A ``SessionScorer`` stepping every member scorer and returning the weighted sum of their normalised scores."""

    def __init__(self, config: Config, scorers: Sequence[SessionScorer]) -> None:
        if len(scorers) != len(config.members) or len({s.n_items for s in scorers}) != 1:
            raise ValueError("one scorer per member, all over the same catalogue")
        self.config = config
        self.scorers = list(scorers)
        self.name = config.label
        self.n_items = scorers[0].n_items

    def reset(self, n_sessions: int) -> None:
        for scorer in self.scorers:
            scorer.reset(n_sessions)

    def step(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        parts = [normalise(scorer.step(rows, items), member.family, self.config.norm)
                 for scorer, member in zip(self.scorers, self.config.members, strict=True)]
        return combine(parts, self.config.weights)


class RecordingScorer:
    """A ``SessionScorer`` passing one member's scores through, keeping every step's score rows and next-click
    targets in evaluation order (as ``evaluation_ranks`` visits ``test`` under the next-click protocol)."""

    def __init__(self, member: SessionScorer, test: SessionArrays) -> None:
        self.member = member
        self.name = member.name
        self.n_items = member.n_items
        self.test = test
        self.first, self.size = 0, 0  # the current chunk's first session and its size
        self.positions = np.zeros(0, np.int64)  # clicks stepped per session of the chunk
        self.score_rows: list[np.ndarray] = []
        self.target_rows: list[np.ndarray] = []

    def reset(self, n_sessions: int) -> None:
        self.first += self.size
        self.size = n_sessions
        self.positions = np.zeros(n_sessions, np.int64)
        self.member.reset(n_sessions)

    def step(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        current = self.test.offsets[self.first + rows] + self.positions[rows]  # (len(rows),) event numbers
        if not np.array_equal(self.test.item_idx[current], items):
            raise RuntimeError("the evaluation visits events in another order than the recorder assumes")
        self.positions[rows] += 1
        scores = self.member.step(rows, items)
        self.score_rows.append(scores)
        self.target_rows.append(self.test.item_idx[current + 1])
        return scores

    def recorded(self) -> tuple[np.ndarray, np.ndarray]:
        """(scores (n_predictions, n_items), targets (n_predictions,)) in evaluation order."""
        return np.concatenate(self.score_rows), np.concatenate(self.target_rows)


class STANScorer(VSKNNScorer):
    """A position-aware session kNN in the spirit of STAN (Garg et al., SIGIR 2019), as a ``SessionScorer``.

    Neighbours and their similarities are V-SKNN's (``VSKNNScorer`` defaults). Neighbour n of prefix p votes
    for each item i it holds with sim(p, n) * exp(-|pos_n(i) - m_n| / lambda3), where m_n is the (0-based)
    position in n of n's last click whose item is in p, and pos_n(i) the occurrence of i in n nearest m_n (an
    item counts once per neighbour); ``after_only``: only items occurring after m_n vote (pos_n(i) > m_n, the
    nearest such occurrence). An item's score is the sum of its votes times its idf factor, as V-SKNN's.
    """

    def __init__(self, train: SessionArrays, n_items: int, lambda3: float, after_only: bool) -> None:
        if lambda3 <= 0:
            raise ValueError("lambda3 must be > 0")
        super().__init__(train, n_items)
        self.name = stan_family(lambda3, after_only)
        self.lambda3, self.after_only = lambda3, after_only
        self.offsets = train.offsets.astype(np.int64)
        self.items = train.item_idx.astype(np.int64)

    def score_prefixes(self, prefixes: Sequence[Sequence[int]]) -> np.ndarray:
        """Next-click scores of all items for each prefix, (len(prefixes), n_items) float64 (0: no vote)."""
        n_prefixes, n_items = len(prefixes), self.n_items
        neighbours = self.neighbours(prefixes)  # (n_prefixes, n_train_sessions) CSR
        pair_prefix = np.repeat(np.arange(n_prefixes, dtype=np.int64), np.diff(neighbours.indptr))
        pair_session = neighbours.indices.astype(np.int64)  # (n_pairs,) one (prefix, neighbour) pair each
        lengths = self.offsets[pair_session + 1] - self.offsets[pair_session]
        event_pair = np.repeat(np.arange(len(pair_session), dtype=np.int64), lengths)  # the neighbours' clicks
        event_pos = np.arange(len(event_pair), dtype=np.int64) - (np.cumsum(lengths) - lengths)[event_pair]
        event_item = self.items[self.offsets[pair_session][event_pair] + event_pos]
        prefix_items = np.concatenate([np.asarray(p, np.int64) for p in prefixes] or [np.zeros(0, np.int64)])
        prefix_of = np.repeat(np.arange(n_prefixes, dtype=np.int64), [len(prefix) for prefix in prefixes])
        prefix_keys = np.unique(prefix_of * n_items + prefix_items)  # (prefix, item) pairs, sorted
        event_key = pair_prefix[event_pair] * n_items + event_item
        found = np.minimum(np.searchsorted(prefix_keys, event_key), max(len(prefix_keys) - 1, 0))
        shared = prefix_keys[found] == event_key if len(prefix_keys) else np.zeros(len(event_key), bool)
        match = np.full(len(pair_session), -1, dtype=np.int64)  # m_n: every neighbour shares an item
        np.maximum.at(match, event_pair[shared], event_pos[shared])
        distance = event_pos - match[event_pair]
        weight = np.exp(-np.abs(distance) / self.lambda3)
        if self.after_only:
            weight[distance <= 0] = 0.0
        cell = event_pair * n_items + event_item  # an item counts once per neighbour: its largest weight
        order = np.lexsort((-weight, cell))
        first = np.ones(len(order), dtype=bool)
        first[1:] = cell[order][1:] != cell[order][:-1]
        keep = order[first]
        votes = neighbours.data[event_pair[keep]] * weight[keep]
        scores = sp.coo_matrix((votes, (pair_prefix[event_pair[keep]], event_item[keep])),
                               shape=(n_prefixes, n_items)).toarray()  # duplicates (neighbours) summed
        scores *= self.model.item_factor
        return scores


@dataclass(frozen=True)
class Split:
    name: str
    train: SessionArrays
    test: SessionArrays
    n_items: int


def load_split(data_dir: Path, day: int | None) -> Split:
    """``day`` None: train_tr -> train_valid. Tuning day ``day`` (1 = the last day of train_tr): the sessions of
    train_tr whose last click falls before that day -> those whose last click falls in it; test restricted to
    the training catalogue."""
    train_frame = load_events(data_dir / "yoochoose-clicks-100k_train_tr.txt", "session-tsv")
    if day is None:
        test_frame = load_events(data_dir / "yoochoose-clicks-100k_train_valid.txt", "session-tsv")
    else:
        last = train_frame.groupby("session_id")["timestamp"].transform("max")
        end = train_frame["timestamp"].max()
        start, stop = end - day * DAY, end - (day - 1) * DAY
        in_day = (last >= start) & ((last < stop) if day > 1 else (last <= end))
        train_frame, test_frame = train_frame[last < start], train_frame[in_day]
    index = ItemIndex.from_events(train_frame["item_id"])
    test = restrict_to_catalogue(test_frame, index).sessions
    split = Split("train_valid" if day is None else f"tuning-d{day}", to_sessions(train_frame, index), test,
                  len(index))
    log.info("%s: %d training events, %d items; %d test predictions", split.name, split.train.n_events,
             split.n_items, split.test.n_events - split.test.n_sessions)
    return split


@dataclass
class Trained:
    scorer: SessionScorer
    seconds: float  # training (V-SKNN: fitting) wall-clock seconds


def train_member(member: Member, split: Split, store: Path | None) -> Trained:
    """Train ``member`` on ``split.train`` (a neural one: or load it from ``store``, where it is kept)."""
    started = time.perf_counter()
    if is_vote(member.family):
        vote: SessionScorer
        if member.family == "vsknn":
            vote = VSKNNScorer(split.train, split.n_items)
        elif member.family == "sr":
            vote = SequentialRulesScorer(split.train, split.n_items)
        else:
            vote = STANScorer(split.train, split.n_items, *stan_settings(member.family))
        return Trained(vote, time.perf_counter() - started)
    params = NEURAL_PARAMS[member.family].model_copy(update={"seed": member.seed})
    path = None if store is None else store / f"{split.name}-{member.family}-{member.seed}.npz"
    if path is not None and path.exists():
        with np.load(path) as saved:
            weights = {name: saved[name] for name in saved.files if name != "train_seconds"}
            seconds = float(saved["train_seconds"])
        log.info("%s: loaded from %s (trained in %.1f s)", member, path, seconds)
    else:
        from offline.sasrec_train import SASRecTrainer  # TensorFlow only when training
        from offline.train import GRU4RecTrainer, item_counts

        counts = item_counts(split.train, split.n_items)
        trainer = (SASRecTrainer(params, counts) if isinstance(params, SASRecParams)
                   else GRU4RecTrainer(params, counts))
        trainer.fit(split.train, progress=False)
        weights, seconds = trainer.weights(), time.perf_counter() - started
        log.info("%s: trained on %s in %.1f s", member, split.name, seconds)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, allow_pickle=False, train_seconds=np.float64(seconds), **weights)
    return Trained(ModelScorer(family_named(member.family).build(weights, params.flat())), seconds)


def record(members: Sequence[Member], trained: dict[Member, Trained], split: Split
           ) -> tuple[dict[Member, np.ndarray], np.ndarray]:
    """Evaluate each member once with ``evaluate``, keeping its score rows; the cached ranks must reproduce
    ``evaluate``'s figures. Returns the score rows per member and the targets, in evaluation order."""
    cache: dict[Member, np.ndarray] = {}
    targets = np.zeros(0, np.int64)
    for member in members:
        recorder = RecordingScorer(trained[member].scorer, split.test)
        metrics = evaluate(recorder, split.test, CUTOFFS)
        cache[member], targets = recorder.recorded()
        again = metrics_from_ranks(target_ranks(cache[member], targets), CUTOFFS)
        if any(abs(again[key] - metrics[key]) > 1e-9 for key in metrics):
            raise RuntimeError(f"{member}: cached ranks {again} differ from evaluate {metrics}")
        log.info("%s: %d predictions recorded", member, len(targets))
    return cache, targets


def blend_ranks(configs: Sequence[Config], cache: dict[Member, np.ndarray], targets: np.ndarray
                ) -> list[np.ndarray]:
    """The target ranks of every config from the cached score rows, one normalisation at a time."""
    ranks: list[np.ndarray] = [np.zeros(0, np.int64) for _ in configs]
    for norm in NORMALISATIONS:
        numbers = [i for i, config in enumerate(configs) if config.norm == norm]
        needed = {member for i in numbers for member in configs[i].members}
        normalised = {member: normalise(cache[member], member.family, norm) for member in needed}
        for i in numbers:
            config = configs[i]
            ranks[i] = target_ranks(combine([normalised[m] for m in config.members], config.weights), targets)
        del normalised
    return ranks


def neural_members(family: str, seeds: Sequence[int]) -> list[Member]:
    return [Member(family, seed) for seed in seeds]


def search_grid(seeds: Sequence[int]) -> list[Config]:
    """Every blend of the search: NORMALISATIONS x first k seeds x GRU_FRACTIONS x VOTE_PARTS."""
    configs = []
    for norm in NORMALISATIONS:
        for k in range(1, len(seeds) + 1):
            neural = [*neural_members("gru4rec", seeds[:k]), *neural_members("sasrec", seeds[:k])]
            for fraction in GRU_FRACTIONS:
                for votes in VOTE_PARTS:
                    rest = 1 - sum(votes.values())
                    shares = {"gru4rec": round(rest * fraction, 3), "sasrec": round(rest * (1 - fraction), 3), **votes}
                    configs.append(Config.of(norm, [*neural, *map(Member, votes)], shares))
    return configs


def reference_configs(seeds: Sequence[int]) -> list[Config]:
    """For comparison only: every member alone (the GRU4REC default with the reference seed first) and each
    neural family's seed averages."""
    configs = [Config.of("logprob", [member]) for family in NEURAL_PARAMS for member in neural_members(family, seeds)]
    configs += [Config.of("logprob", [Member(family)]) for family in ("vsknn", "sr", *STAN_FAMILIES)]
    for norm in NORMALISATIONS:
        for family in NEURAL_PARAMS:
            configs += [Config.of(norm, neural_members(family, seeds[:k])) for k in range(2, len(seeds) + 1)]
    return configs


@dataclass
class Result:
    """A config's figures on each split (and pooled), with its members' training seconds per split."""

    config: Config
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    member_seconds: dict[str, dict[str, float]] = field(default_factory=dict)

    def recall(self, split: str) -> float:
        return self.metrics[split]["recall@20"]

    def mrr(self, split: str) -> float:
        return self.metrics[split]["mrr@20"]

    def gains(self, reference: Result, split: str) -> tuple[float, float]:
        return self.recall(split) - reference.recall(split), self.mrr(split) - reference.mrr(split)

    def margin(self, reference: Result, split: str) -> float:
        return min(self.gains(reference, split))

    def emit(self, split: str) -> None:
        seconds = self.member_seconds.get(split, {})
        print(json.dumps({"split": split, "name": self.config.label, "recall@20": round(self.recall(split), 4),
                          "mrr@20": round(self.mrr(split), 4),
                          "n_predictions": int(self.metrics[split]["n_predictions"]),
                          "train_s": round(sum(seconds.values()), 1),
                          "members_train_s": {k: round(v, 1) for k, v in seconds.items()}}), flush=True)


def choose(candidates: Sequence[Result], reference: Result, pooled: str, days: Sequence[str]) -> Result:
    """The rule of the module docstring: best pooled smaller gain; among those within NEAR of it on both pooled
    metrics (only those with TARGET_GAIN on both metrics on every day, if any), the fewest seeds, then the fewest
    members, then the fewest unserved members, then GRU4REC:SASRec closest to even, then the smallest vote share,
    then the largest pooled smaller gain."""
    best = max(candidates, key=lambda r: r.margin(reference, pooled))
    near = [r for r in candidates
            if r.recall(pooled) >= best.recall(pooled) - NEAR and r.mrr(pooled) >= best.mrr(pooled) - NEAR]
    every_day = [r for r in near if all(r.margin(reference, day) >= TARGET_GAIN for day in days)]
    return min(every_day or near, key=lambda r: (
        r.config.n_seeds, len(r.config.members), r.config.n_unserved, round(abs(r.config.gru_fraction - 0.5), 6),
        round(r.config.vote_share, 6), -r.margin(reference, pooled)))


def print_table(results: Sequence[Result], reference: Result, splits: Sequence[str], title: str) -> None:
    """Figures on the first split, then the gains on every split; * = +1.0 on both metrics on every split."""
    first = splits[0]
    print(f"\n{title}\nreference {reference.config.label}: "
          + ", ".join(f"{s} {reference.recall(s):.4f} / {reference.mrr(s):.4f}" for s in splits))
    header = "".join(f"{'dR ' + s[-11:]:>15}{'dMRR':>8}" for s in splits)
    print(f"{'config':<56}{'R@20':>8}{'MRR@20':>8}{header}")
    for r in results:
        gains = "".join(f"{r.gains(reference, s)[0]:>+15.4f}{r.gains(reference, s)[1]:>+8.4f}" for s in splits)
        mark = " *" if all(r.margin(reference, s) >= TARGET_GAIN for s in splits) else ""
        print(f"{r.config.short:<56}{r.recall(first):>8.4f}{r.mrr(first):>8.4f}{gains}{mark}")


def run_tuning(args: argparse.Namespace) -> None:
    seeds: list[int] = args.seeds
    grid = search_grid(seeds)
    configs = [*reference_configs(seeds), *grid]
    members = sorted({member for config in configs for member in config.members})
    results = [Result(config) for config in configs]
    ranks: list[list[np.ndarray]] = [[] for _ in configs]
    splits, trained_by_day = [], {}
    for day in range(1, args.days + 1):
        split = load_split(args.data_dir, day)
        splits.append(split)
        trained = {member: train_member(member, split, args.weights_dir) for member in members}
        trained_by_day[split.name] = trained
        cache, targets = record(members, trained, split)
        for number, day_ranks in enumerate(blend_ranks(configs, cache, targets)):
            ranks[number].append(day_ranks)
            results[number].metrics[split.name] = metrics_from_ranks(day_ranks, CUTOFFS)
            results[number].member_seconds[split.name] = {str(m): trained[m].seconds for m in configs[number].members}
        del cache
    days = [split.name for split in splits]
    pooled = "pooled"
    for result, config_ranks in zip(results, ranks, strict=True):
        result.metrics[pooled] = metrics_from_ranks(np.concatenate(config_ranks), CUTOFFS)
        for name in [*days, pooled]:
            result.emit(name)
    reference = results[0]  # the GRU4REC default, reference seed
    candidates = results[len(configs) - len(grid):]
    n_pooled = int(reference.metrics[pooled]["n_predictions"])
    order = [pooled, *days]
    print_table(results[:len(configs) - len(grid)], reference, order, "single models and family seed averages")
    ranked = sorted(candidates, key=lambda r: -r.margin(reference, pooled))
    print_table(ranked[:args.rows], reference, order, f"the best {args.rows} of {len(grid)} blends by the smaller "
                f"pooled gain ({n_pooled} predictions; * = +1.0 on both metrics everywhere)")
    chosen = choose(candidates, reference, pooled, days)
    for split in splits:
        trained = trained_by_day[split.name]
        check = evaluate(BlendScorer(chosen.config, [trained[m].scorer for m in chosen.config.members]),
                         split.test, CUTOFFS)
        if any(abs(check[key] - chosen.metrics[split.name][key]) > 1e-9 for key in ("recall@20", "mrr@20")):
            raise RuntimeError(f"{split.name}: BlendScorer through evaluate {check} differs from the cached figures")
    print_table([chosen], reference, order, "chosen (checked through evaluate with BlendScorer on every day)")
    every_day = all(chosen.margin(reference, day) >= TARGET_GAIN for day in days)
    print(f"{chosen.config}\nmember weights: " + ", ".join(
        f"{m}={w:.4g}" for m, w in zip(chosen.config.members, chosen.config.weights, strict=True))
        + f"\n+{TARGET_GAIN * 100:.1f} on both metrics on every day: {'yes' if every_day else 'NO'}"
        + f"\nfinal run: .venv/bin/python bench/tune_blend.py --final '{chosen.config}'"
        + (f" --weights-dir {args.weights_dir}" if args.weights_dir else ""))


def run_final(args: argparse.Namespace) -> None:
    config = Config.parse(args.final)
    compare = [Config.parse(text) for text in args.compare if Config.parse(text) != config]
    split = load_split(args.data_dir, None)
    reference = Member("gru4rec", args.seeds[0])
    members = sorted({reference, *config.members, *(m for other in compare for m in other.members)})
    trained = {member: train_member(member, split, args.weights_dir) for member in members}
    cache, targets = record(members, trained, split)
    configs = [Config.of("logprob", [member]) for member in members]
    for family in NEURAL_PARAMS:
        seeds = [m for m in config.members if m.family == family]
        if len(seeds) > 1:
            configs.append(Config.of(config.norm, seeds))
    configs += [*compare, config]
    results = []
    for cfg, ranks in zip(configs, blend_ranks(configs, cache, targets), strict=True):
        seconds = {str(m): trained[m].seconds for m in cfg.members}
        results.append(Result(cfg, {split.name: metrics_from_ranks(ranks, CUTOFFS)}, {split.name: seconds}))
    del cache
    blend = results[-1]
    check = evaluate(BlendScorer(config, [trained[m].scorer for m in config.members]), split.test, CUTOFFS)
    if any(abs(check[key] - blend.metrics[split.name][key]) > 1e-9 for key in ("recall@20", "mrr@20")):
        raise RuntimeError(f"BlendScorer through evaluate {check} differs from the cached figures")
    for result in results:
        result.emit(split.name)
    baseline = results[members.index(reference)]
    print_table(results, baseline, [split.name], f"{split.name} (train_tr -> train_valid), "
                f"{int(baseline.metrics[split.name]['n_predictions'])} predictions, run once for the chosen config "
                "(last row; checked through evaluate with BlendScorer; * = both +1.0)")
    for other in compare:
        print(f"compared: {other}")
    print(f"{config}\nmember weights: " + ", ".join(
        f"{m}={w:.4g}" for m, w in zip(config.members, config.weights, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS),
                        help="seeds per neural family; blends use the first k (the first is the reference)")
    parser.add_argument("--days", type=int, default=2, help="tuning days, counted back from train_tr's last")
    parser.add_argument("--rows", type=int, default=TABLE_ROWS, help="blends shown in the tuning table")
    parser.add_argument("--final", metavar="CONFIG", help="train on train_tr, evaluate CONFIG (NORM:MEMBERS[:WEIGHTS], "
                        "as printed by a tuning run) and its members once on train_valid")
    parser.add_argument("--compare", metavar="CONFIG", nargs="*", default=[ROUND2],
                        help="--final: configs also scored for comparison (default: round 2's choice)")
    parser.add_argument("--weights-dir", type=Path, help="keep trained weights here and reuse them on later runs")
    args = parser.parse_args()
    if args.days < 1:
        parser.error("--days must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("tensorflow", "absl", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.final:
        run_final(args)
    else:
        run_tuning(args)


if __name__ == "__main__":
    main()
