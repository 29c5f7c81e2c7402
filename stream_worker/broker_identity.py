"""Which broker the worker's local table data came from: a marker topic's first record, recorded beside RocksDB."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from stream_worker.settings import WorkerSettings

log = logging.getLogger(__name__)

# A tansu broker with memory storage loses every topic and offset when it restarts, and its Kafka cluster id
# ("tansu_cluster") stays the same. So the worker keeps a marker topic, <app_id>-broker-identity, whose first
# record carries a random token written by the first worker that found it empty, and records that token (and
# the cluster id) in <data_dir>/broker-identity.json. A start that finds another token drops the local table
# data before Faust opens it; a running worker that sees the marker change stops, so that its next start is
# fresh. A broker that keeps its data keeps the marker, so nothing is dropped (and dropping would only cost a
# restore from the changelog, the table's source of truth). Measurements and tests: docs/reliability.md, 3.

IDENTITY_FILE = "broker-identity.json"
"""Name of the file beside the table data (in ``data_dir``) that records the broker identity."""
MARKER_TOPIC_CONFIG: Mapping[str, str] = {"cleanup.policy": "compact", "retention.ms": "-1", "retention.bytes": "-1"}
"""Marker topic config: nothing ever expires, and compaction keeps every record (each has its own key)."""
_POLL_MS = 200


class BrokerIdentityError(ConnectionError):
    """The broker did not tell its identity in time (unreachable, or it refused a request); one line."""


class BrokerChangedError(RuntimeError):
    """The broker a running worker talks to is not the one its table data came from."""


@dataclass(frozen=True)
class BrokerIdentity:
    """A broker instance as the worker knows it: the marker topic, its first record's token, the cluster id."""

    topic: str
    token: str
    cluster_id: str | None = None

    def same_broker(self, other: BrokerIdentity) -> bool:
        """Same marker token; the cluster ids must agree as well when both are known."""
        if (self.topic, self.token) != (other.topic, other.token):
            return False
        return self.cluster_id is None or other.cluster_id is None or self.cluster_id == other.cluster_id

    def __str__(self) -> str:
        return f"token {self.token[:12]}, cluster {self.cluster_id or 'unknown'}"


def marker_topic(app_id: str) -> str:
    """The marker topic of an app: ``<app_id>-broker-identity``."""
    return f"{app_id}-broker-identity"


# ------------------------------------------------------------------------------------------- the broker's side


def read_marker(settings: WorkerSettings, topic: str, timeout_s: float = 10.0) -> str | None:
    """Token of the marker topic's first record; None when the topic does not exist or holds no record.

    The answer is definite: a broker that cannot be asked raises ``BrokerIdentityError`` instead of None.
    """
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    timeout_ms = max(int(timeout_s * 1000), 1000)
    deadline = time.monotonic() + timeout_s
    consumer: Any = None
    try:
        consumer = KafkaConsumer(**settings.kafka_python_config(), group_id=None, enable_auto_commit=False,
                                 allow_auto_create_topics=False, fetch_max_wait_ms=100,
                                 request_timeout_ms=timeout_ms + 1000, bootstrap_timeout_ms=timeout_ms)
        if topic not in consumer.topics():  # a full metadata request: the broker's own list of topics
            return None
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        start = int(consumer.beginning_offsets([tp], timeout_ms=timeout_ms)[tp])  # EARLIEST (right on tansu)
        consumer.seek(tp, start)
        while time.monotonic() < deadline:
            for record in consumer.poll(timeout_ms=_POLL_MS, max_records=1).get(tp, []):
                return _token_of(record.key, record.value)
            highwater = consumer.highwater(tp)  # from the fetch answer, not ListOffsets(LATEST)
            if highwater is not None and highwater <= start:
                return None
    except KafkaError as error:
        raise BrokerIdentityError(f"cannot read {topic} from {settings.bootstrap_servers}: {error!r}") from error
    finally:
        if consumer is not None:
            with contextlib.suppress(Exception):
                consumer.close()
    raise BrokerIdentityError(f"no answer from {settings.bootstrap_servers} for {topic} within {timeout_s:g} s")


def _token_of(key: bytes | None, value: bytes | None) -> str:
    """The token a marker record carries; any other record stands for the digest of its bytes."""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        token = json.loads(value or b"").get("token")
        if isinstance(token, str) and token:
            return token
    return hashlib.sha256((key or b"") + b"\x00" + (value or b"")).hexdigest()


def write_marker(settings: WorkerSettings, topic: str, timeout_s: float = 10.0) -> None:
    """Create the marker topic (1 partition, MARKER_TOPIC_CONFIG) if needed and append a fresh random token."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    from stream_worker.broker import create_topics

    token = uuid.uuid4().hex
    producer: Any = None
    try:
        create_topics(settings.kafka_python_config(), {topic: 1}, MARKER_TOPIC_CONFIG,
                      replication_factor=settings.replication_factor, timeout_s=timeout_s)
        timeout_ms = max(int(timeout_s * 1000), 1000)
        producer = KafkaProducer(**settings.kafka_python_config(), acks="all", request_timeout_ms=timeout_ms,
                                 bootstrap_timeout_ms=timeout_ms)
        value = json.dumps({"token": token, "created_at": time.time()}).encode()
        producer.send(topic, key=token.encode(), value=value, partition=0).get(timeout=timeout_s)
    except KafkaError as error:
        raise BrokerIdentityError(f"cannot write {topic} on {settings.bootstrap_servers}: {error!r}") from error
    finally:
        if producer is not None:
            with contextlib.suppress(Exception):
                producer.close(timeout=5)


def cluster_id(settings: WorkerSettings, timeout_s: float = 10.0) -> str | None:
    """The Kafka cluster id (DescribeCluster); None when the broker does not answer it."""
    from kafka.admin import KafkaAdminClient

    timeout_ms = max(int(timeout_s * 1000), 1000)
    admin: Any = None
    try:
        admin = KafkaAdminClient(**settings.kafka_python_config(), request_timeout_ms=timeout_ms,
                                 bootstrap_timeout_ms=timeout_ms)
        found = admin.describe_cluster().get("cluster_id")
        return str(found) if found else None
    except Exception as error:  # an old broker or a refused request: the marker token decides alone
        log.debug("no cluster id from %s: %r", settings.bootstrap_servers, error)
        return None
    finally:
        if admin is not None:
            with contextlib.suppress(Exception):
                admin.close()


def broker_identity(settings: WorkerSettings, timeout_s: float | None = None) -> BrokerIdentity:
    """The identity of the broker ``settings`` point at; writes the marker first if the broker has none.

    Two workers starting together on an empty broker may both write a token: both then read the same first
    record. Retries until ``timeout_s`` (default ``broker_identity_timeout_s``) while the broker is unreachable.
    """
    budget = settings.broker_identity_timeout_s if timeout_s is None else timeout_s
    deadline = time.monotonic() + budget
    topic = marker_topic(settings.app_id)
    delay = 0.5
    while True:
        step = min(max(deadline - time.monotonic(), 1.0), 10.0)
        try:
            token = read_marker(settings, topic, step)
            if token is None:
                write_marker(settings, topic, step)
                token = read_marker(settings, topic, step)
            if token is None:
                raise BrokerIdentityError(f"{topic} still empty after writing a token")
            return BrokerIdentity(topic, token, cluster_id(settings, step))
        except BrokerIdentityError as error:
            if time.monotonic() + delay > deadline:
                raise BrokerIdentityError(f"broker identity unknown after {budget:g} s: {error}") from error
            log.info("waiting for the broker's identity (%s)", error)
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


# --------------------------------------------------------------------------------------------- the local side


def recorded_identity(data_dir: Path) -> BrokerIdentity | None:
    """The identity recorded in ``data_dir``; None if there is none. Raises ValueError if it is unreadable."""
    path = data_dir / IDENTITY_FILE
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return None
    try:
        fields = json.loads(raw)
        identity = BrokerIdentity(str(fields["topic"]), str(fields["token"]), fields.get("cluster_id"))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is unreadable ({error!r})") from error
    if not identity.token or (identity.cluster_id is not None and not isinstance(identity.cluster_id, str)):
        raise ValueError(f"{path} is unreadable (bad fields)")
    return identity


def record_identity(data_dir: Path, identity: BrokerIdentity) -> None:
    """Write ``identity`` to ``data_dir/broker-identity.json`` atomically (temporary file, fsync, rename)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / IDENTITY_FILE
    temporary = path.with_name(f".{IDENTITY_FILE}.{os.getpid()}.tmp")
    with open(temporary, "w") as handle:
        json.dump({**asdict(identity), "recorded_at": time.time()}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    with contextlib.suppress(OSError):  # make the rename itself durable
        directory = os.open(data_dir, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _has_files(directory: Path) -> bool:
    return directory.is_dir() and any(directory.iterdir())


def match_data_dir(data_dir: Path, table_dir: Path, current: BrokerIdentity, broker: str = "") -> bool:
    """Make the local table data belong to ``current``: drop ``table_dir`` when the identity recorded in
    ``data_dir`` is another broker's (or unreadable), then record ``current``. True if data was dropped.

    No identity recorded (a new data dir, or one written before this check existed) adopts ``current`` and
    keeps the data: a broker that kept its data must never cost the worker its state.
    """
    try:
        recorded = recorded_identity(data_dir)
        unreadable = ""
    except ValueError as error:
        recorded, unreadable = None, str(error)
    if recorded is not None and recorded.same_broker(current):
        if recorded != current:  # e.g. the cluster id became known
            record_identity(data_dir, current)
        return False
    dropped = False
    if recorded is None and not unreadable:
        if _has_files(table_dir):
            log.info("no broker identity recorded beside the table data in %s: recording %s", data_dir, current)
    elif _has_files(table_dir):
        shutil.rmtree(table_dir)
        dropped = True
        was = unreadable or f"the data's {recorded}"
        log.warning("broker %s is not the one the local table data came from (its %s; %s): dropped %s, "
                    "starting fresh", broker or "?", current, was, table_dir)
    record_identity(data_dir, current)
    return dropped


def prepare_data_dir(settings: WorkerSettings, table_dir: Path) -> BrokerIdentity:
    """At start, before Faust opens any table: the broker's identity, with the local table data made to match it."""
    current = broker_identity(settings)
    match_data_dir(settings.data_dir, table_dir, current, settings.bootstrap_servers)
    return current


# ------------------------------------------------------------------------------------------- while running


def watch_broker_identity(app: Any, settings: WorkerSettings, identity: BrokerIdentity) -> None:
    """Stop the worker (``app``, a faust.App) when the broker's marker is no longer ``identity``'s: a memory
    broker restarted empty under it. Checked every ``broker_identity_check_s`` (without a rebalance the worker
    would stall silently: its fetch positions lie past the end of the recreated topics) and whenever a rebalance
    revokes partitions, before Faust's table recovery could die on the stale offsets with ConsistencyError. The
    next start then drops the stale table data. An unreachable broker is not a verdict."""
    stopping = False

    async def token_now(timeout_s: float) -> str | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, read_marker, settings, identity.topic, timeout_s)

    async def check(timeout_s: float) -> None:
        nonlocal stopping
        try:
            token = await token_now(timeout_s)
            if token == identity.token:
                return
            await asyncio.sleep(0.5)  # confirm: one answer should not stop a worker
            token = await token_now(timeout_s)
        except BrokerIdentityError as error:
            log.debug("broker identity not checked: %s", error)
            return
        if token == identity.token or stopping:
            return
        stopping = True
        now = f"{identity.topic} is gone" if token is None else f"its token is now {token[:12]}"
        message = (f"the broker at {settings.bootstrap_servers} changed under the running worker ({now}; the table "
                   f"data's {identity}): stopping; the next start drops the local table data")
        log.critical(message)
        await app.crash(BrokerChangedError(message))

    @app.timer(settings.broker_identity_check_s)
    async def check_broker_identity() -> None:
        await check(min(max(settings.broker_identity_check_s, 2.0), 10.0))

    @app.on_partitions_revoked.connect
    async def check_broker_identity_on_rebalance(sender: Any, revoked: Any, **kwargs: Any) -> None:
        await check(3.0)  # (inside the rebalance: short)
