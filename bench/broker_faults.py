"""Broker outages under a running worker: tansu stopped for some seconds mid-stream and started again on the same
port, with durable storage (s3:// on a local moto server: topics and offsets survive) and with memory storage
(a restart wipes every topic, committed offset and group); what the worker does, what is lost."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _support import given_or_trained

from tests.support.outage import MotoServer, Tansu, find_moto_server, run_outage
from tests.support.workloads import workload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000, help="backlog size (s3 storage on moto is slow)")
    parser.add_argument("--outage-s", type=float, default=10.0)
    parser.add_argument("--storage", nargs="+", choices=("s3", "memory"), default=["s3", "memory"])
    parser.add_argument("--models-dir", type=Path, help="serve this model (default: train one on train_tr)")
    parser.add_argument("--json", type=Path, help="also write the reports here")
    args = parser.parse_args()
    messages = workload(args.events)
    reports = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models_dir = given_or_trained(args.models_dir, work)
        for storage in args.storage:
            moto: MotoServer | None = None
            if storage == "s3":
                executable = find_moto_server()
                if executable is None:
                    print("s3: skipped, no moto_server (pip install 'moto[server]', or set MOTO_SERVER)")
                    continue
                moto = MotoServer(executable, "tansu", work / "moto.log")
                broker = Tansu("s3://tansu/", work / "tansu-s3.log", moto.tansu_env())
            else:
                broker = Tansu("memory://tansu/", work / "tansu-memory.log")
            try:
                broker.start()
                report = run_outage(broker, models_dir, work, messages, args.outage_s, durable=storage == "s3")
            finally:
                broker.stop()
                if moto is not None:
                    moto.stop()
            print(json.dumps(report.__dict__, indent=2, default=str))
            reports.append(report.__dict__)
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2, default=str))


if __name__ == "__main__":
    main()
