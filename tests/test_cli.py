"""The streamrec CLI: the offline commands, their JSON output, and one-line errors with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

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
    (["train", "--train", "missing.tsv", "--format", "session-tsv", "--batch-size", "0"], "batch_size"),
    (["evaluate", "--model", "/nonexistent/model", "--test", "t", "--format", "session-tsv"], "no model directory"),
])
def test_bad_arguments_give_one_line_and_exit_2(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        code = main(argv)
        raise SystemExit(code)
    assert exit_info.value.code == 2
    assert fragment in _one_error_line(capsys)
