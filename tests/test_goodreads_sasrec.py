"""The seed notebook's path end to end: GoodReads reviews -> users with >= 10 reviews -> leave-one-out ->
SASRec trained -> the last book of every user ranked by full ranking (seen books excluded) and sampled."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modelkit.artifact import load_artifact
from streamrec.cli import main

N_USERS, N_BOOKS = 60, 30


def _write_reviews(path: Path, seed: int = 0) -> dict[str, list[str]]:
    """GoodReads review lines (user_id, book_id, rating, date_added as in the public dump): most users read
    books along a chain, a few have fewer than 10 reviews. Returns each user's books in time order."""
    rng = np.random.default_rng(seed)
    books_of: dict[str, list[str]] = {}
    lines = []
    for user in range(N_USERS):
        user_id = f"{user:032x}"
        n_reviews = int(rng.integers(4, 9)) if user % 10 == 0 else int(rng.integers(10, 16))
        book = int(rng.integers(N_BOOKS))
        books = []
        for day in range(n_reviews):
            books.append(str(book))
            date = f"Mon Jan {day + 1:02d} 10:{user % 60:02d}:00 -0800 2015"
            lines.append(json.dumps({"user_id": user_id, "book_id": str(book), "review_id": f"r{user}-{day}",
                                     "rating": int(rng.integers(1, 6)), "date_added": date}))
            book = (book + 1) % N_BOOKS if rng.random() < 0.9 else int(rng.integers(N_BOOKS))
        books_of[user_id] = books
    rng.shuffle(lines)  # the dump is not in time order
    path.write_text("\n".join(lines) + "\n")
    return books_of


def test_goodreads_prepare_train_sasrec_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    books_of = _write_reviews(tmp_path / "goodreads_reviews.json")
    data, models = tmp_path / "data", tmp_path / "models"
    assert main(["prepare", "--input", str(tmp_path / "goodreads_reviews.json"), "--format", "goodreads",
                 "--session-gap", "none", "--min-user-events", "10", "--min-item-support", "0",
                 "--split", "leave-one-out", "--out", str(data)]) == 0
    capsys.readouterr()
    kept = {user: books for user, books in books_of.items() if len(books) >= 10}
    test_lines = (data / "test.tsv").read_text().splitlines()[1:]
    assert {line.split("\t")[0] for line in test_lines} == set(kept)  # users with < 10 reviews are gone
    train_lines = (data / "train.tsv").read_text().splitlines()[1:]
    assert len(train_lines) == sum(len(books) - 2 for books in kept.values())  # last two held out per user

    assert main(["--no-progress", "train", "--model", "sasrec", "--train", str(data / "train_full.tsv"),
                 "--format", "session-tsv", "--out", str(models), "--epochs", "3", "--max-len", "10",
                 "--hidden", "16"]) == 0
    artifact = load_artifact(models / "current")
    assert artifact.manifest.model_family == "sasrec" and artifact.manifest.hyperparameters["max_len"] == 10
    capsys.readouterr()

    test = ["--model", str(models / "current"), "--test", str(data / "test.tsv"), "--format", "session-tsv",
            "--protocol", "last-item", "--exclude-seen", "--json"]
    assert main(["evaluate", *test]) == 0
    full = json.loads(capsys.readouterr().out)
    assert full["n_predictions"] == len(kept)  # one target per user: the last book
    assert main(["evaluate", *test, "--sampled-negatives", "20", "--seed", "1"]) == 0
    sampled = json.loads(capsys.readouterr().out)
    # Against 20 random unseen books instead of all 30, a target can only rank higher.
    assert sampled["sampled"]["recall@10"] >= full["recall@10"]
    assert sampled["sampled"]["n_predictions"] == len(kept)
