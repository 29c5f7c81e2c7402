"""Crash recovery on the embedded broker: SIGKILL the worker at random points (sometimes losing RocksDB), then
check every event against an uninterrupted in-process run (predictions, duplicates, final session states).

The scenario itself is tests/support/crash.py (tests/test_reliability.py runs it at a smaller size). The model is
any family's: ``--family sasrec`` serves a SASRec with random weights over the same items (no SASRec training yet).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from _support import given_or_trained

from modelkit.artifact import load_artifact
from modelkit.registry import new_version_name
from stream_worker.broker import EmbeddedBroker
from tests.support.artifacts import random_rsc15_artifact
from tests.support.crash import run_crash_recovery
from tests.support.workloads import workload

FAMILIES = ("gru4rec", "sasrec")


def models_of(family: str, models_dir: Path | None, work: Path) -> Path:
    """``--models-dir`` (its current model must be of ``family``), else GRU4REC trained on train_tr or a random
    SASRec (2 blocks of 64, window 50) over the same items."""
    if models_dir is not None:
        served = load_artifact(models_dir / "current").manifest.model_family
        if served != family:
            raise SystemExit(f"--models-dir serves {served}, not --family {family}")
        return models_dir
    if family == "gru4rec":
        return given_or_trained(None, work)
    random_rsc15_artifact(work / "models", family, new_version_name())
    return work / "models"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--family", choices=FAMILIES, default="gru4rec", help="model family served")
    parser.add_argument("--models-dir", type=Path,
                        help="serve this model (default: GRU4REC trained on train_tr, or a random SASRec)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    messages = workload(args.events)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_path=Path(tmp) / "tansu.log") as broker:
        work = Path(tmp)
        models_dir = models_of(args.family, args.models_dir, work)
        report = run_crash_recovery(broker.bootstrap, models_dir, work, messages, args.kills, args.seed)
    result = {k: v for k, v in report.__dict__.items()}
    print(json.dumps(result, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    ok = (report.predictions["without_prediction"] == 0 and report.predictions["differing_from_fault_free"] == 0
          and report.states["missing"] == report.states["wrong"] == 0 and report.duplicates["same_incarnation"] == 0)
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
