"""Settings of the streaming processes (worker, broker tools, replay, tail): env vars prefixed STREAMREC_."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
"""SASL mechanisms configurable from settings (all username/password based)."""


class WorkerSettings(BaseSettings):
    """One place for every streaming setting; each field reads ``STREAMREC_<FIELD>`` (case-insensitive).

    To add a setting, add a typed field with a default (and a ``Field`` constraint where a bad value would
    only fail later inside Kafka or Faust); nothing else needs to change.
    """

    model_config = SettingsConfigDict(env_prefix="STREAMREC_", extra="ignore", validate_default=True)

    # --- Kafka connection
    bootstrap_servers: str = Field(default="localhost:9092", description="comma-separated host:port list")
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    # --- topics
    clicks_topic: str = Field(default="clicks", min_length=1)
    predictions_topic: str = Field(default="predictions", min_length=1)
    dead_letter_topic: str = Field(default="clicks-dead-letter", min_length=1)
    model_updates_topic: str = Field(default="model-updates", min_length=1)
    metrics_topic: str = Field(default="recommender-metrics", min_length=1)
    partitions: int = Field(default=4, ge=1, description="partitions of clicks, predictions and the sessions table")
    replication_factor: int = Field(default=1, ge=1)

    # --- worker (Faust)
    app_id: str = Field(default="streamrec-worker", min_length=1)
    data_dir: Path = Path("runs/worker")
    models_dir: Path = Path("models")
    top_k: int = Field(default=20, ge=1)
    batch_delivery: bool = Field(
        default=True, description="hand each fetch of the clicks topic to the batch path as one list, acknowledged "
        "in bulk once applied (stream_worker/transport.py); false: Faust's per-event path (an agent with "
        "take_events(batch_size, within=batch_within_s), one event, task and ack per click)")
    batch_size: int = Field(default=500, ge=1, description="most clicks per batch of the per-event path")
    batch_within_s: float = Field(default=0.02, gt=0, description="longest wait for a batch of the per-event path")
    max_batch_records: int = Field(
        default=1000, ge=1, description="most records one fetch hands over (the batch path takes what the fetch "
        "returned: small batches at low load, large ones under a backlog)")
    pipeline_depth: int = Field(
        default=2, ge=1, description="batches whose predictions may wait for the broker's acknowledgement while "
        "the next one is processed (1: one batch at a time)")
    session_ttl_s: float = Field(default=1800, gt=0)
    expiry_interval_s: float = Field(default=60.0, gt=0, description="how often expired sessions are swept")
    ring_size: int = Field(default=50, ge=1, description="item hashes kept per session (at least the model's window)")
    standby_replicas: int = Field(default=0, ge=0)
    session_timeout_s: float = Field(default=6.0, gt=0, description="group session timeout (tansu: joins wait ~half)")
    commit_interval_s: float = Field(default=1.0, gt=0)
    producer_linger_ms: int = Field(default=5, ge=0)
    web_port: int = Field(default=6066, ge=0, le=65535)
    web_host: str = "127.0.0.1"
    web_canonical_url: str | None = Field(
        default=None, description="URL other workers reach this one's web port at (routing of session reads); "
        "default http://<web_host>:<web_port>, or the host name instead of a wildcard web_host")
    read_forward_timeout_s: float = Field(
        default=5.0, gt=0, description="how long a session read waits for the worker it was forwarded to")
    broker_identity_timeout_s: float = Field(
        default=60.0, gt=0, description="how long the worker's start waits for the broker to tell its identity")
    broker_identity_check_s: float = Field(
        default=10.0, gt=0, description="how often a running worker checks that the broker is still the one its "
        "table data came from")
    fetch_max_wait_ms: int = Field(
        default=10, ge=0, description="the consumer's fetch wait (Faust hard-codes 1500 ms). The default is for "
        "tansu: a fetch waiting for data is not answered when data arrives, only when this wait is over, so it "
        "adds up to this much to a click's latency (worker p99 at 1,500 clicks/s: 21 ms at 10, 25 ms at 20; idle, "
        "a fetch per wait costs the worker and tansu ~5 % of a core each). Apache Kafka answers a long poll as soon "
        "as data arrives: there a longer wait (e.g. 500) only saves idle fetch requests")
    max_message_bytes: int = Field(default=65536, ge=1)
    model_poll_s: float = Field(default=2.0, gt=0)
    blas_threads: int = Field(default=1, ge=1, description="BLAS threads of the worker's NumPy model")
    catch_up_interval_s: float = Field(
        default=10.0, gt=0, description="a partition behind its end with no click delivered for this long is read "
        "from the broker directly")
    gap_read_max_records: int = Field(
        default=20_000, ge=1, description="most clicks one batch reads from the broker to fill what the consumer "
        "did not deliver; the rest follows with the next batches")
    batch_retries: int = Field(default=5, ge=0, description="retries of a failing batch before dead-lettering it")
    retry_backoff_s: float = Field(default=0.5, gt=0, description="first retry delay; doubles per attempt")
    metrics_interval_s: float = Field(default=10.0, gt=0, description="how often online metrics are published")
    online_window: int = Field(default=10_000, ge=1, description="predictions in the rolling online window")

    @field_validator("bootstrap_servers")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        hosts = [host.strip() for host in value.split(",") if host.strip()]
        if not hosts:
            raise ValueError("bootstrap_servers is empty; expected host:port[,host:port...]")
        for host in hosts:
            name, sep, port = host.rpartition(":")
            if not sep or not name or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"bad bootstrap server {host!r}; expected host:port")
        return ",".join(hosts)

    @model_validator(mode="after")
    def _check_security(self) -> WorkerSettings:
        if self.security_protocol.startswith("SASL_"):
            if self.sasl_mechanism is None:
                raise ValueError(f"security_protocol {self.security_protocol} needs sasl_mechanism")
            if self.sasl_mechanism.upper() not in SASL_MECHANISMS:
                raise ValueError(f"sasl_mechanism {self.sasl_mechanism!r} not supported; use {SASL_MECHANISMS}")
            if self.sasl_username is None or self.sasl_password is None:
                raise ValueError(f"sasl_mechanism {self.sasl_mechanism} needs sasl_username and sasl_password")
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("ssl_keyfile is set but ssl_certfile is not")
        return self

    # ------------------------------------------------------------------------------------------ derived values

    def bootstrap_list(self) -> list[str]:
        """``bootstrap_servers`` as a list of "host:port" strings."""
        return self.bootstrap_servers.split(",")

    def canonical_url(self) -> str:
        """Where other workers reach this worker's web views: ``web_canonical_url``, else built from the web
        host and port (a wildcard host such as 0.0.0.0 is replaced by this machine's host name)."""
        if self.web_canonical_url:
            return self.web_canonical_url.rstrip("/")
        host = self.web_host
        if host in ("", "0.0.0.0", "::", "[::]"):
            host = socket.gethostname()
        elif ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 literal
        return f"http://{host}:{self.web_port}"

    def broker_url(self) -> str:
        """Faust's broker URL: ``kafka://host1:9092;host2:9092``."""
        return "kafka://" + ";".join(self.bootstrap_list())

    def kafka_python_config(self) -> dict[str, Any]:
        """Connection kwargs shared by kafka-python's KafkaProducer, KafkaConsumer and KafkaAdminClient."""
        config: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_list(),
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol.startswith("SASL_"):
            assert self.sasl_mechanism is not None and self.sasl_password is not None  # checked by the validator
            config["sasl_mechanism"] = self.sasl_mechanism.upper()
            config["sasl_plain_username"] = self.sasl_username
            config["sasl_plain_password"] = self.sasl_password.get_secret_value()
        if self.security_protocol in ("SSL", "SASL_SSL"):
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                value = getattr(self, name)
                if value is not None:
                    config[name] = str(value)
        return config

    def ssl_context(self) -> ssl.SSLContext | None:
        """TLS context built from ``ssl_cafile``/``ssl_certfile``/``ssl_keyfile``; None without TLS."""
        if self.security_protocol not in ("SSL", "SASL_SSL"):
            return None
        cafile = str(self.ssl_cafile) if self.ssl_cafile is not None else None
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
        if self.ssl_certfile is not None:
            keyfile = str(self.ssl_keyfile) if self.ssl_keyfile is not None else None
            context.load_cert_chain(str(self.ssl_certfile), keyfile)
        return context

    def faust_credentials(self) -> CredentialsT | None:
        """Faust ``broker_credentials`` for the security settings (None for PLAINTEXT)."""
        import faust  # lazy: Faust is heavy and only the worker needs it

        if self.security_protocol == "PLAINTEXT":
            return None
        if self.security_protocol == "SSL":
            return faust.SSLCredentials(self.ssl_context())
        assert self.sasl_mechanism is not None and self.sasl_password is not None  # checked by the validator
        return faust.SASLCredentials(
            username=self.sasl_username,
            password=self.sasl_password.get_secret_value(),
            mechanism=self.sasl_mechanism.upper(),
            ssl_context=self.ssl_context(),
        )


def client_config(target: str | Mapping[str, Any] | WorkerSettings) -> dict[str, Any]:
    """kafka-python connection kwargs from a bootstrap string ("h1:9092,h2:9092"), a config dict or settings."""
    if isinstance(target, WorkerSettings):
        return target.kafka_python_config()
    if isinstance(target, str):
        hosts = [host.strip() for host in target.split(",") if host.strip()]
        if not hosts:
            raise ValueError("empty bootstrap servers; expected host:port[,host:port...]")
        return {"bootstrap_servers": hosts}
    config = dict(target)
    servers = config.get("bootstrap_servers")
    if isinstance(servers, str):
        config["bootstrap_servers"] = client_config(servers)["bootstrap_servers"]
    elif not servers:
        raise ValueError("client config has no bootstrap_servers")
    else:
        config["bootstrap_servers"] = list(servers)
    return config
