"""Scale-out on the embedded broker: two workers in one consumer group, one SIGKILLed mid-stream (its partitions and
session state move to the survivor), then a third joins; recovery time, no loss, final state vs a fault-free run,
and a model swap that must reach every worker."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from _support import given_or_trained

from stream_worker.broker import EmbeddedBroker
from tests.support.scale import run_scale_out
from tests.support.workloads import workload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--rate", type=float, default=400.0, help="events/s offered during the run")
    parser.add_argument("--standby", type=int, nargs="+", default=[0, 1], help="STREAMREC_STANDBY_REPLICAS values")
    parser.add_argument("--phase-s", type=float, default=15.0)
    parser.add_argument("--models-dir", type=Path, help="serve this model (default: train one on train_tr)")
    parser.add_argument("--json", type=Path, help="also write the reports here")
    args = parser.parse_args()
    messages = workload(args.events)
    reports = []
    ok = True
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_path=Path(tmp) / "tansu.log") as broker:
        work = Path(tmp)
        models_dir = given_or_trained(args.models_dir, work)
        for standby in args.standby:
            report = run_scale_out(broker.bootstrap, models_dir, work, messages, args.rate, standby,
                                   phase_s=args.phase_s)
            print(json.dumps(report.__dict__, indent=2, default=str))
            reports.append(report.__dict__)
            ok = ok and report.predictions["without_prediction"] == 0 \
                and report.predictions["differing_from_fault_free"] == 0 \
                and report.states["missing"] == report.states["wrong"] == 0
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2, default=str))
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
