"""The streamrec CLI: the offline commands, their JSON output, and one-line errors with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from streamrec.cli import main
from tests.support.workloads import synthetic_sessions

TINY = ["--layers", "16", "--batch-size", "8", "--n-sample", "16", "--epochs", "1"]


def _write_tsv(path: Path, n_sessions: int, seed: int) -> Path:
    sids, items, times = synthetic_sessions(n_sessions, n_items=30, seed=seed)
    rows = zip(sids, items, times, strict=True)
    lines = ["SessionId\tItemId\tTime"] + [f"{s}\t{i}\t{float(t)!r}" for s, i, t in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if line.startswith("streamrec")]
    assert len(err) == 1, err
    return err[0]


def test_train_evaluate_baselines_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train = _write_tsv(tmp_path / "train.tsv", 120, seed=1)
    test = _write_tsv(tmp_path / "test.tsv", 40, seed=2)
    models = tmp_path / "models"
    assert main(["--no-progress", "train", "--train", str(train), "--format", "session-tsv", "--out", str(models),
                 *TINY]) == 0
    capsys.readouterr()
    args = ["--test", str(test), "--train", str(train), "--format", "session-tsv", "--json"]
    assert main(["evaluate", "--model", str(models / "current"), *args]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {f"{m}@{k}" for m in ("recall", "mrr", "ndcg") for k in (1, 5, 10, 20)}
    assert 0 <= result["mrr@20"] <= result["recall@20"] <= 1 and result["n_predictions"] > 0
    assert main(["baselines", *args[2:], "--test", str(test)]) == 0
    baselines = json.loads(capsys.readouterr().out)["baselines"]
    assert set(baselines) == {"pop", "sr", "vsknn"}
    assert baselines["pop"]["n_predictions"] == result["n_predictions"]


def test_leave_one_out_and_evaluation_protocols(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sids, items, _ = synthetic_sessions(150, n_items=30, seed=4, max_length=10)
    source = tmp_path / "seq.txt"  # user-sequence: one "user item" line per event, in time order
    source.write_text("".join(f"{s} {i}\n" for s, i in zip(sids, items, strict=True)))
    data = tmp_path / "loo"
    assert main(["prepare", "--input", str(source), "--format", "user-sequence", "--split", "leave-one-out",
                 "--min-session-length", "0", "--min-item-support", "0", "--out", str(data)]) == 0
    held_out = json.loads(capsys.readouterr().out)["leave_one_out"]
    models = tmp_path / "models"
    assert main(["--no-progress", "train", "--train", str(data / "train.tsv"), "--format", "session-tsv",
                 "--out", str(models), *TINY]) == 0
    capsys.readouterr()

    def run(command: str, *flags: str) -> dict[str, Any]:
        common = ["--test", str(data / "test.tsv"), "--format", "session-tsv", "--json", *flags]
        where = ["--model", str(models / "current")] if command == "evaluate" else ["--train", str(data / "train.tsv")]
        assert main([command, *where, *common]) == 0
        result: dict[str, Any] = json.loads(capsys.readouterr().out)
        return result

    expected = held_out["held_out_sequences"] - held_out["test_targets_unseen_in_train"]
    last = run("evaluate", "--protocol", "last-item", "--exclude-seen")
    assert last["n_predictions"] == expected
    assert last["protocol"] == {"targets": "last-item", "exclude_seen": True, "ranking": "full"}
    every = run("evaluate")
    assert every["n_predictions"] > expected and every["protocol"]["targets"] == "next-click"
    sampled = run("evaluate", "--protocol", "last-item", "--sampled-negatives", "5", "--seed", "1")
    assert sampled == run("evaluate", "--protocol", "last-item", "--sampled-negatives", "5", "--seed", "1")
    assert "recall@1" not in sampled and sampled["sampled"]["n_predictions"] == expected
    assert sampled["protocol"] == {"targets": "last-item", "exclude_seen": False, "ranking": "sampled",
                                   "sampled_negatives": 5, "seed": 1}  # fmt: skip
    assert sampled["sampled"]["recall@5"] >= last["recall@5"]  # 5 of 6 candidates: easier than full ranking
    baselines = run("baselines", "--protocol", "last-item", "--sampled-negatives", "5")
    assert "baselines" not in baselines and set(baselines["sampled_baselines"]) == {"pop", "sr", "vsknn"}
    assert baselines["sampled_baselines"]["pop"]["n_predictions"] == expected

    assert main(["evaluate", "--model", str(models / "current"), "--test", str(data / "test.tsv"),
                 "--format", "session-tsv", "--protocol", "last-item", "--sampled-negatives", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "last-item targets, SAMPLED ranking against 5 negatives, seed 0" in lines[0]
    assert lines[1] == "sampled metrics: target vs 5 random unseen items (not comparable with full ranking)"
    assert lines[3].startswith("gru4rec")


def test_malformed_training_file_fails_cleanly_and_publishes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("SessionId\tItemId\tTime\n1\t2\t100.0\n1\t3\tnot-a-time\n")
    models = tmp_path / "models"
    assert main(["train", "--train", str(bad), "--format", "session-tsv", "--out", str(models), *TINY]) == 2
    line = _one_error_line(capsys)
    assert "bad.tsv" in line and "line 3" in line
    assert not models.exists() or not any(models.iterdir())


@pytest.mark.parametrize("argv, fragment", [
    (["train", "--format", "session-tsv"], "--train"),
    (["train", "--train", "x", "--format", "csv"], "invalid choice"),
    (["prepare", "--input", "x", "--format", "movielens", "--session-gap", "soon", "--out", "o"], "session-gap"),
    (["train", "--train", "missing.tsv", "--format", "session-tsv", "--model", "gru4rec", "--batch-size", "0"],
     "batch_size"),
    (["train", "--train", "missing.tsv", "--format", "session-tsv", "--epochs", "2"], "add --model gru4rec or sasrec"),
    (["evaluate", "--model", "/nonexistent/model", "--test", "t", "--format", "session-tsv"], "no model directory"),
    (["evaluate", "--model", "m", "--test", "t", "--format", "session-tsv", "--seed", "3"], "--sampled-negatives"),
    (["evaluate", "--model", "m", "--test", "t", "--format", "session-tsv", "--sampled-negatives", "0"],
     "sampled-negatives"),
    (["baselines", "--train", "a", "--test", "t", "--format", "session-tsv", "--protocol", "first"], "invalid choice"),
    (["prepare", "--input", "x", "--format", "user-sequence", "--split", "leave-one-out", "--test-days", "2",
      "--out", "o"], "--split time"),
    (["prepare", "--input", "x", "--format", "user-sequence", "--min-item-support", "-1", "--out", "o"],
     "min-item-support"),
    (["prepare", "--input", "x", "--format", "session-tsv", "--min-user-events", "3", "--out", "o"],
     "formats with users"),
])
def test_bad_arguments_give_one_line_and_exit_2(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        code = main(argv)
        raise SystemExit(code)
    assert exit_info.value.code == 2
    assert fragment in _one_error_line(capsys)
