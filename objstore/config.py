"""One frozen, validated configuration object for a node and its clients.

Values come, each later layer winning, from the defaults below, an optional
TOML file, ``OBJSTORE_<SECTION>_<FIELD>`` environment variables (for example
``OBJSTORE_PLASMA_MEMORY=2GiB``) and command-line flags.  Every field has a
validator; a bad value raises :class:`~objstore.errors.ConfigError` naming the
setting, so a node stops at start with a clear message.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from objstore.errors import ConfigError

__all__ = [
    "Config",
    "LifecycleConfig",
    "PlasmaConfig",
    "TransferConfig",
    "DirectoryConfig",
    "SpillConfig",
    "NodeConfig",
    "SecurityConfig",
    "parse_size",
    "format_size",
    "default_socket_path",
    "physical_memory",
]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": KiB,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": MiB,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": GiB,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": TiB,
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: int | str, setting: str = "size") -> int:
    """Parse ``2GiB``, ``512MiB``, ``1.5GB`` or plain bytes into an int of bytes."""
    if isinstance(value, bool):
        raise ConfigError(f"{setting}: expected a size, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{setting}: a size cannot be negative, got {value}")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{setting}: expected a size such as 512MiB, got {value!r}")
    text = value.strip()
    if text.startswith("-"):
        raise ConfigError(f"{setting}: a size cannot be negative, got {value!r}")
    match = _SIZE_RE.match(text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ConfigError(
            f"{setting}: cannot read {value!r} as a size (use bytes or a unit: KiB, MiB, GiB, TiB, KB, MB, GB)"
        )
    number = float(match.group(1)) if "." in match.group(1) else int(match.group(1))
    return int(number * _UNITS[match.group(2).lower()])


def format_size(n: float) -> str:
    """Format a byte count for people: ``1.5 GiB``."""
    for unit, scale in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def physical_memory() -> int:
    """Bytes of physical memory on this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_socket_path() -> str:
    """The node socket used when neither ``--socket`` nor ``$OBJSTORE_SOCKET`` names one."""
    return os.path.join(tempfile.gettempdir(), f"objstore-{os.getuid()}", "node.sock")


def _positive(name: str, v: Any) -> None:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
        raise ConfigError(f"{name}: must be a positive number, got {v!r}")


def _non_negative(name: str, v: Any) -> None:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
        raise ConfigError(f"{name}: must be zero or more, got {v!r}")


def _positive_int(name: str, v: Any) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ConfigError(f"{name}: must be a whole number of at least 1, got {v!r}")


def _non_negative_int(name: str, v: Any) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ConfigError(f"{name}: must be a whole number of zero or more, got {v!r}")


def _s3_part_size(name: str, v: Any) -> None:
    # S3 refuses multipart parts under 5 MiB (all but the last) and over 5 GiB.
    if not isinstance(v, int) or isinstance(v, bool) or not 5 * MiB <= v <= 5 * GiB:
        raise ConfigError(f"{name}: must be between 5 MiB and 5 GiB (S3's limits), got {v!r}")


def _s3_put_size(name: str, v: Any) -> None:
    # S3 refuses a single PUT over 5 GiB.
    if not isinstance(v, int) or isinstance(v, bool) or not 0 < v <= 5 * GiB:
        raise ConfigError(f"{name}: must be between 1 byte and 5 GiB (S3's limit), got {v!r}")


def _fraction(name: str, v: Any) -> None:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v <= 1:
        raise ConfigError(f"{name}: must be a fraction in (0, 1], got {v!r}")


def _one_of(*choices: str) -> Callable[[str, Any], None]:
    def check(name: str, v: Any) -> None:
        if v not in choices:
            raise ConfigError(f"{name}: must be one of {', '.join(choices)}; got {v!r}")

    return check


def _port(name: str, v: Any) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 65535:
        raise ConfigError(f"{name}: must be a TCP port in 0..65535, got {v!r}")


def _str(name: str, v: Any) -> None:
    if not isinstance(v, str):
        raise ConfigError(f"{name}: must be a string, got {v!r}")


def _opt_str(name: str, v: Any) -> None:
    if v is not None and not isinstance(v, str):
        raise ConfigError(f"{name}: must be a string, got {v!r}")


def _ids(name: str, v: Any) -> None:
    if not isinstance(v, tuple) or not all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 2**32 for i in v
    ):
        raise ConfigError(f"{name}: must be a list of numeric ids, got {v!r}")


def _setting(default: Any, check: Callable[[str, Any], None], doc: str, size: bool = False) -> Any:
    return field(default=default, metadata={"check": check, "doc": doc, "size": size})


@dataclass(frozen=True)
class PlasmaConfig:
    """The node's shared-memory store."""

    # Arena size in bytes; 0 means 30% of physical memory, as Ray does.
    memory: int = _setting(0, _non_negative, "arena size in bytes (0: 30% of RAM)", size=True)
    # Unix socket clients connect to; "" means $OBJSTORE_SOCKET, then the default path.
    socket: str = _setting("", _str, "client socket path")
    # Directory for file-backed fallback allocations when the arena is full; "" means the temp dir.
    fallback_dir: str = _setting("", _str, "directory for fallback allocations")
    # Most bytes the fallback may hold at once; 0 disables the fallback.
    fallback_max_bytes: int = _setting(64 * GiB, _non_negative, "fallback capacity", size=True)
    # Bytes of the arena faulted in by background threads from start.
    prefault_bytes: int = _setting(
        1 * GiB, _non_negative, "arena bytes faulted in at start", size=True
    )
    # Of those, bytes faulted in before the node says it is ready (first puts run warm).
    prefault_before_ready_bytes: int = _setting(
        256 * MiB, _non_negative, "arena bytes faulted in before ready", size=True
    )
    # Payloads up to this size travel inside the put request (one round trip).
    inline_max_bytes: int = _setting(64 * KiB, _positive, "largest inline payload", size=True)
    # Payloads from this size are copied by several threads at once.
    parallel_copy_min_bytes: int = _setting(4 * MiB, _positive, "smallest parallel copy", size=True)
    # Threads that copy one large payload into the arena (0: one per core).
    copy_threads: int = _setting(0, _non_negative, "copy threads per large put (0: cores)")
    # Largest local protocol frame accepted; larger ones close the connection.
    max_frame_bytes: int = _setting(64 * MiB, _positive, "largest protocol frame", size=True)
    # Largest metadata of one object; it is kept in the node's heap, not in the arena.
    max_metadata_bytes: int = _setting(
        64 * KiB, _positive, "largest metadata of one object", size=True
    )
    # How many ids of deleted objects the node remembers to answer "deleted" rather than wait.
    deleted_memory: int = _setting(65536, _non_negative, "deleted ids remembered")


@dataclass(frozen=True)
class TransferConfig:
    """Moving objects between nodes: the data plane and the pulling side."""

    # Bytes per FETCH request; objects up to min(this, 256 KiB) travel many per request.
    chunk_size: int = _setting(5 * MiB, _positive, "bytes per transfer chunk", size=True)
    # Bytes of pulls in flight at once (the pull policy's admission; one pull always may go).
    max_bytes_in_flight: int = _setting(256 * MiB, _positive, "bytes in flight per node", size=True)
    # Seconds one request to a source may take, from connecting to the reply's last byte.
    pull_timeout_s: float = _setting(10.0, _positive, "timeout per request to a source")
    # A pull that made no progress (no chunk came, no attempt succeeded) for this long, while
    # a source was known, fails the gets waiting for it (ObjectFetchTimedOutError).
    fetch_timeout_s: float = _setting(60.0, _positive, "seconds a pull may make no progress")
    # Requests this node has in flight to one source at once (each on its own connection).
    connections_per_peer: int = _setting(8, _positive_int, "requests in flight per source")
    # A pooled connection idle this long is closed rather than reused (below idle_timeout_s,
    # so a puller never reuses a connection the source is about to close).
    peer_idle_s: float = _setting(60.0, _positive, "idle seconds before a pooled connection closes")
    # The serving side closes a connection that sends no request for this long.
    idle_timeout_s: float = _setting(300.0, _positive, "idle seconds before the server closes")
    # Receivers of one large object a node serves at once while it still receives it
    # itself (a broadcast forwards chunks down chains: see objstore/directory/relays.py);
    # 0 turns relays off (every receiver pulls from a whole copy).
    relay_fanout: int = _setting(2, _non_negative_int, "receivers per relaying node")
    # Objects at least this large are relayed; smaller ones are pulled from whole copies.
    relay_min_bytes: int = _setting(
        16 * MiB, _positive, "smallest object pulled through relays", size=True
    )


@dataclass(frozen=True)
class DirectoryConfig:
    """The object directory (served by the head node)."""

    store: str = _setting("sqlite", _str, "durable store: sqlite or redis://host:port/db")
    state_dir: str = _setting("", _str, "where the head keeps durable state")
    heartbeat_s: float = _setting(1.0, _positive, "seconds between heartbeats")
    node_timeout_s: float = _setting(10.0, _positive, "silence after which a node is dead")
    # Most entries in one location report (nodes send at most this many, as Ray's 2,000).
    max_report: int = _setting(2000, _positive, "most entries per location report")
    # Most ids in one lookup or delete request.
    max_lookup: int = _setting(100_000, _positive, "most ids per lookup")
    # Most objects one node's subscription stream may watch at once.
    max_subscriptions: int = _setting(1_000_000, _positive, "most subscriptions per stream")
    # Largest request message the directory reads; larger ones are refused.
    max_message_bytes: int = _setting(16 * MiB, _positive, "largest directory request", size=True)
    # How many deleted ids the directory remembers (a lookup then says DELETED).
    deleted_memory: int = _setting(100_000, _non_negative, "deleted ids remembered")
    # Seconds between batched writes of the durable state.
    flush_interval_s: float = _setting(0.05, _positive, "seconds between state writes")
    # A node sends at most one location report per this many seconds (unless
    # a full one is waiting); the first change after a quiet spell goes at once.
    report_interval_s: float = _setting(0.005, _positive, "least seconds between reports")
    # Seconds a node waits for one directory request before it retries.
    request_timeout_s: float = _setting(10.0, _positive, "timeout of one directory request")


@dataclass(frozen=True)
class SpillConfig:
    """Spilling primary copies to external storage."""

    url: str = _setting("", _str, "spill target: a directory or s3://bucket/prefix")
    threshold: float = _setting(0.8, _fraction, "primary bytes fraction that starts spilling")
    min_spilling_size: int = _setting(100 * MiB, _positive, "smallest fused spill file", size=True)
    max_fused_object_count: int = _setting(2000, _positive, "most objects per spill file")
    # zstd level for spill files (0: off).  Records that do not shrink are stored raw.
    compression: int = _setting(0, _non_negative, "zstd level of spill files (0: off)")
    # After a spill write, how long a create that needs the room waits for the
    # owners of the objects written to let go of their mappings.
    unmap_wait_s: float = _setting(2.0, _positive, "wait for owners to unmap spilled objects")
    # The most a create (or a restore) waits for spilling to make room for it.
    make_room_timeout_s: float = _setting(14.0, _positive, "deadline of making room by spilling")
    # Tries again of a restore (or a file delete) after a transient error, waiting
    # with exponential backoff from restore_retry_first_s to restore_retry_max_s.
    restore_retries: int = _setting(4, _non_negative_int, "retries of a failed restore read")
    restore_retry_first_s: float = _setting(0.05, _positive, "first pause before a retry")
    restore_retry_max_s: float = _setting(2.0, _positive, "longest pause before a retry")
    # Bytes of pending restores handed out at once (records of one file read together).
    restore_group_bytes: int = _setting(
        256 * MiB, _positive, "bytes of restores started together", size=True
    )
    # After a failed spill write, further writes wait: first this, doubled per failure.
    write_backoff_first_s: float = _setting(0.1, _positive, "first pause after a failed write")
    write_backoff_max_s: float = _setting(5.0, _positive, "longest pause after failed writes")
    # At shutdown, how long the node waits for its spill files to be deleted.
    shutdown_delete_timeout_s: float = _setting(10.0, _positive, "wait for deletes at shutdown")
    # S3: multipart part size (S3's minimum is 5 MiB) and the largest single PUT.
    s3_part_size: int = _setting(16 * MiB, _s3_part_size, "S3 multipart part size", size=True)
    s3_single_put_max_bytes: int = _setting(
        16 * MiB, _s3_put_size, "largest spill file sent as one S3 PUT", size=True
    )
    # S3: seconds to connect and to wait for each read, per HTTP request.
    s3_connect_timeout_s: float = _setting(10.0, _positive, "S3 connect timeout")
    s3_read_timeout_s: float = _setting(60.0, _positive, "S3 read timeout")
    # S3: tries of one request (botocore's standard retries), parts uploaded at once.
    s3_max_attempts: int = _setting(3, _positive_int, "tries of one S3 request")
    s3_concurrency: int = _setting(4, _positive_int, "S3 parts uploaded at once")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # each field first, then the pairs
            f.metadata["check"](f"spill.{f.name}", getattr(self, f.name))
        if self.write_backoff_max_s < self.write_backoff_first_s:
            raise ConfigError("spill.write_backoff_max_s: less than spill.write_backoff_first_s")
        if self.restore_retry_max_s < self.restore_retry_first_s:
            raise ConfigError("spill.restore_retry_max_s: less than spill.restore_retry_first_s")


@dataclass(frozen=True)
class NodeConfig:
    """The node process."""

    head: bool = _setting(False, lambda n, v: None, "run the directory server too")
    host: str = _setting("127.0.0.1", _str, "address the node listens on")
    port: int = _setting(0, _port, "object manager port (0: any free port)")
    directory_port: int = _setting(0, _port, "directory port on the head (0: any free port)")
    directory: str | None = _setting(None, _opt_str, "HOST:PORT of the head's directory")
    # The data plane address other nodes are told to use ("" : the one it listens on),
    # for a node behind a proxy or NAT.
    advertise: str = _setting("", _str, "data plane HOST:PORT told to other nodes")
    log_format: str = _setting("console", _one_of("console", "json"), "stderr log format")
    log_level: str = _setting("info", _one_of("debug", "info", "warning", "error"), "log level")
    # The node logs "event loop blocked" when the loop itself kept a tick this late (0: off).
    loop_lag_warn_ms: float = _setting(250.0, _non_negative, "loop stall that is logged")
    # Clients of the local socket must run as the node's uid, or as one of these
    # uids, or with one of these gids as their primary group (SO_PEERCRED). When
    # either is set the socket is made 0666 and the node's own socket directory
    # 0711 so those users can reach it (SO_PEERCRED refuses everyone else); a
    # --socket directory of the user's choosing must let them pass (o+x) too.
    allowed_uids: tuple[int, ...] = _setting((), _ids, "other uids allowed on the local socket")
    allowed_gids: tuple[int, ...] = _setting((), _ids, "gids allowed on the local socket")


@dataclass(frozen=True)
class SecurityConfig:
    """Who may talk to a node: the cluster token and TLS (see objstore/auth.py)."""

    # A file holding the cluster token ("": $OBJSTORE_TOKEN_FILE, then the head's
    # --state-dir token or a new one; on other nodes the one the head published).
    token_file: str = _setting("", _str, "file holding the cluster token")
    # No authentication at all: anyone who reaches a port may read, delete and pose as a node.
    insecure: bool = _setting(False, lambda n, v: None, "turn authentication off")
    # Mutual TLS for the directory and the data plane: all three, or none.
    tls_cert: str = _setting("", _str, "this node's TLS certificate (PEM)")
    tls_key: str = _setting("", _str, "this node's TLS private key (PEM)")
    tls_ca: str = _setting("", _str, "the CA that signs every node's certificate (PEM)")
    # A data plane handshake that fails closes its connection after this delay.
    refuse_delay_s: float = _setting(0.2, _non_negative, "delay before closing a refused peer")
    # How long a new data plane connection may take to prove itself.
    handshake_timeout_s: float = _setting(5.0, _positive, "data plane handshake deadline")


@dataclass(frozen=True)
class LifecycleConfig:
    """How objects manage their own lifetime (docs/lifecycle.md)."""

    # A pickled ref keeps its object alive this long, for a receiver to register.
    borrow_grace_s: float = _setting(30.0, _non_negative, "seconds a pickled ref holds its object")
    # Attempts at recreating a lost object with its put's recreate= callable.
    max_recreations: int = _setting(3, _positive_int, "recreation attempts per lost object")
    # A node asked to keep a replica has this long to report its copy before
    # another node is asked; a put with replicas=N waits at most this long too.
    replica_timeout_s: float = _setting(30.0, _positive, "seconds to make one replica")
    # Every copy of an object its owner can recreate is lost: gets on other
    # nodes wait this long for the recreation before they fail (ObjectLostError).
    recreate_wait_s: float = _setting(
        30.0, _non_negative, "seconds gets wait for a lost object's recreation"
    )


_SECTIONS: dict[str, type] = {
    "plasma": PlasmaConfig,
    "transfer": TransferConfig,
    "directory": DirectoryConfig,
    "spill": SpillConfig,
    "node": NodeConfig,
    "security": SecurityConfig,
    "lifecycle": LifecycleConfig,
}


@dataclass(frozen=True)
class Config:
    """Everything a node needs, in sections.  Build with :meth:`load`."""

    plasma: PlasmaConfig = field(default_factory=PlasmaConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    directory: DirectoryConfig = field(default_factory=DirectoryConfig)
    spill: SpillConfig = field(default_factory=SpillConfig)
    node: NodeConfig = field(default_factory=NodeConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    lifecycle: LifecycleConfig = field(default_factory=LifecycleConfig)

    def __post_init__(self) -> None:
        for name in _SECTIONS:
            section = getattr(self, name)
            for f in dataclasses.fields(section):
                f.metadata["check"](f"{name}.{f.name}", getattr(section, f.name))
        memory = self.plasma.memory
        if memory:
            if memory < 1 * MiB:
                raise ConfigError(f"plasma.memory: at least 1 MiB, got {format_size(memory)}")
            limit = physical_memory()
            if memory > limit:
                raise ConfigError(
                    f"plasma.memory: {format_size(memory)} is more than this machine's "
                    f"{format_size(limit)} of memory"
                )
        if self.transfer.chunk_size > self.transfer.max_bytes_in_flight:
            raise ConfigError("transfer.chunk_size: larger than transfer.max_bytes_in_flight")
        if self.transfer.peer_idle_s >= self.transfer.idle_timeout_s:
            raise ConfigError(
                f"transfer.peer_idle_s: {self.transfer.peer_idle_s} s must be less than "
                f"transfer.idle_timeout_s ({self.transfer.idle_timeout_s} s), or pullers "
                "reuse connections the server is closing"
            )

    # -- derived values -------------------------------------------------
    @property
    def memory_bytes(self) -> int:
        """The arena size in bytes, with the 30%-of-RAM default applied (64-byte multiple)."""
        n = self.plasma.memory or int(physical_memory() * 0.3)
        return n - n % 4096

    @property
    def socket_path(self) -> str:
        """The client socket path, defaults applied."""
        return self.plasma.socket or os.environ.get("OBJSTORE_SOCKET") or default_socket_path()

    # -- construction ---------------------------------------------------
    def replace(self, **sections: Mapping[str, Any]) -> Config:
        """Return a copy with some fields of some sections changed (validated)."""
        return _build(self, sections)

    @classmethod
    def load(
        cls,
        toml_path: str | None = None,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Config:
        """Defaults, then ``toml_path``, then ``OBJSTORE_*`` variables, then ``overrides``."""
        cfg = cls()
        if toml_path:
            try:
                with open(toml_path, "rb") as fh:
                    data = tomllib.load(fh)
            except OSError as exc:
                raise ConfigError(f"config file {toml_path}: {exc.strerror}") from exc
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"config file {toml_path}: {exc}") from exc
            cfg = _build(cfg, data)
        cfg = _build(cfg, _from_env(os.environ if env is None else env))
        if overrides:
            cfg = _build(cfg, overrides)
        return cfg

    @classmethod
    def for_test(cls, **sections: Mapping[str, Any]) -> Config:
        """Tiny sizes so that multi-chunk, fallback and spill paths run in fast tests."""
        base = cls().replace(
            plasma={
                "memory": 64 * MiB,
                "prefault_bytes": 0,
                "inline_max_bytes": 4 * KiB,
                "parallel_copy_min_bytes": 256 * KiB,
                "fallback_max_bytes": 256 * MiB,
            },
            transfer={
                "chunk_size": 64 * KiB,
                "max_bytes_in_flight": 1 * MiB,
                "pull_timeout_s": 2.0,
            },
            spill={"min_spilling_size": 1 * MiB},
        )
        return base.replace(**sections) if sections else base

    def describe(self) -> dict[str, dict[str, Any]]:
        """Every setting with its value, for logs and ``--help-config``."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in _SECTIONS}


def _convert(name: str, f: dataclasses.Field[Any], value: Any) -> Any:
    """Bring a value from TOML, the environment or a flag to the field's type."""
    if f.metadata.get("size"):
        return parse_size(value, name)
    default = f.default
    if isinstance(default, tuple):
        if isinstance(value, str):
            try:
                return tuple(int(p) for p in value.replace(",", " ").split())
            except ValueError as exc:
                raise ConfigError(
                    f"{name}: expected numbers separated by commas, got {value!r}"
                ) from exc
        if isinstance(value, list):
            return tuple(value)
    if isinstance(value, str):
        if isinstance(default, bool):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{name}: expected true or false, got {value!r}")
        if isinstance(default, int) and not isinstance(default, bool):
            try:
                return int(value)
            except ValueError as exc:
                raise ConfigError(f"{name}: expected a whole number, got {value!r}") from exc
        if isinstance(default, float):
            try:
                return float(value)
            except ValueError as exc:
                raise ConfigError(f"{name}: expected a number, got {value!r}") from exc
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _build(cfg: Config, data: Mapping[str, Any]) -> Config:
    changes: dict[str, Any] = {}
    for section_name, values in data.items():
        if section_name not in _SECTIONS:
            raise ConfigError(
                f"unknown config section {section_name!r} (known: {', '.join(_SECTIONS)})"
            )
        if not isinstance(values, Mapping):
            raise ConfigError(f"config section {section_name!r} must be a table")
        section = getattr(cfg, section_name)
        fields = {f.name: f for f in dataclasses.fields(section)}
        updates = {}
        for key, value in values.items():
            if key not in fields:
                raise ConfigError(
                    f"unknown setting {section_name}.{key} (known: {', '.join(fields)})"
                )
            updates[key] = _convert(f"{section_name}.{key}", fields[key], value)
        changes[section_name] = dataclasses.replace(section, **updates)
    return dataclasses.replace(cfg, **changes)


def _from_env(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for key, value in env.items():
        if key == "OBJSTORE_TOKEN_FILE":  # the short name the README gives
            out.setdefault("security", {}).setdefault("token_file", value)
            continue
        if not key.startswith("OBJSTORE_") or key == "OBJSTORE_SOCKET":
            continue
        rest = key[len("OBJSTORE_") :].lower()
        section, _, name = rest.partition("_")
        if section in _SECTIONS and name:
            out.setdefault(section, {})[name] = value
    return out
