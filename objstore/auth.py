"""The cluster's secret and the proofs of it: nothing reaches an object without one.

Every node of a cluster and every tool that talks to one hold the same
*cluster token* (32 random bytes unless the operator brings one).  The token
never crosses the wire; what travels are HMAC-SHA256 proofs of it:

* **Directory (gRPC).** Every request carries ``authorization`` metadata:
  ``v1.<channel>.<counter>.<unix time>.<mac>``, the MAC (HMAC-SHA256 cut to
  128 bits) over the method, the channel's random id, a per-request counter
  and the time.  The header is named ``authorization`` so that HTTP/2 sends
  it never-indexed: a value new on every request has no business in the
  header compression table.  (Its cost per call, mostly HPACK's pure-Python
  Huffman coding of the value, is in BENCHMARKS.md.)  The directory
  checks it in constant time before any handler runs and refuses a proof
  older than :data:`PROOF_WINDOW_S` or one whose (channel, counter) it has
  already seen (:class:`ProofVerifier`), so a captured request cannot be
  replayed.  It remembers, per channel that proved itself, only the highest
  counter and a small bitmap; a wrong proof costs it nothing.
* **Data plane (raw TCP).** Each connection begins with a mutual
  challenge–response before any request is read: the puller sends a nonce,
  the server answers with its own nonce and a MAC over both, the puller
  checks it and answers with its MAC over both (different labels, so neither
  side's answer can be reflected back).  :class:`ClientHandshake` and
  :func:`server_challenge` / :func:`check_client_answer` hold the bytes; the
  socket I/O is the transfer package's.
* **TLS** (optional, ``--tls-cert/--tls-key/--tls-ca``): mutual TLS under the
  cluster's CA for gRPC and the data plane (:meth:`Credentials.server_ssl`,
  :meth:`Credentials.client_ssl`); the proofs above still run inside it.

Where the token comes from (:func:`head_credentials`, :func:`member_credentials`):
``--token-file`` / ``$OBJSTORE_TOKEN_FILE``; on the head, else ``token`` in
``--state-dir`` (made at first start), else a fresh one.  The head writes it,
0600, under the user's runtime or config directory keyed by the directory's
address (:func:`cache_path`), where the same user's nodes and CLI on the same
machine find it by themselves.  ``--insecure`` turns all of this off.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import ssl
import stat
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from objstore.config import SecurityConfig
from objstore.errors import AuthenticationError, ConfigError, ObjectStoreError

__all__ = [
    "AuthenticationError",
    "Credentials",
    "TlsFiles",
    "TOKEN_BYTES",
    "MIN_TOKEN_CHARS",
    "generate_token",
    "read_token_file",
    "write_token_file",
    "cache_dir",
    "cache_path",
    "publish_token",
    "unpublish_token",
    "head_credentials",
    "member_credentials",
    "check_private_dir",
    "add_credential_flags",
    "security_flags",
    "http_key",
    "METADATA_KEY",
    "PROOF_WINDOW_S",
    "ChannelProver",
    "ProofVerifier",
    "HANDSHAKE_MAGIC",
    "CLIENT_HELLO",
    "SERVER_CHALLENGE",
    "CLIENT_ANSWER_SIZE",
    "VERDICT_OK",
    "VERDICT_REFUSED",
    "ClientHandshake",
    "server_challenge",
    "check_client_answer",
]

TOKEN_BYTES = 32
# A token file the operator brings holds at least this many characters (128 bits as hex).
MIN_TOKEN_CHARS = 32
TOKEN_FILE_NAME = "token"


@dataclass(frozen=True)
class TlsFiles:
    """Mutual TLS: this side's certificate and key, and the CA both sides trust."""

    cert: str
    key: str
    ca: str


@dataclass(frozen=True)
class Credentials:
    """What a node or a tool proves itself with: the token, and TLS if configured.

    ``token=None`` means authentication is off (``--insecure``).
    """

    token: bytes | None
    tls: TlsFiles | None = None
    # Where the token came from, for logs ("generated", a file's path, ...).
    source: str = ""

    @classmethod
    def insecure(cls) -> Credentials:
        return cls(None, None, "insecure")

    @classmethod
    def for_test(cls, token: bytes = b"t" * TOKEN_BYTES) -> Credentials:
        return cls(token, None, "test")

    @property
    def secure(self) -> bool:
        return self.token is not None

    def __repr__(self) -> str:  # never print the token
        return f"Credentials(token={'set' if self.token else None}, tls={self.tls}, source={self.source!r})"

    def server_ssl(self, alpn: list[str] | None = None) -> ssl.SSLContext | None:
        """A server-side context requiring a client certificate from the CA; None without TLS."""
        if self.tls is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=self.tls.ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.verify_mode = ssl.CERT_REQUIRED
        _load_chain(ctx, self.tls)
        # No session tickets: a pooled data plane connection's idle check peeks
        # at the socket, and a ticket arriving there would look like garbage.
        ctx.num_tickets = 0
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx

    def client_ssl(self, alpn: list[str] | None = None) -> ssl.SSLContext | None:
        """A client-side context presenting this side's certificate; None without TLS.

        Peers are checked against the cluster's CA, not their host names:
        nodes are reached by address, and every certificate the CA signed
        belongs to the cluster.
        """
        if self.tls is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.tls.ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        _load_chain(ctx, self.tls)
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx


def _load_chain(ctx: ssl.SSLContext, tls: TlsFiles) -> None:
    try:
        ctx.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"security.tls_cert/tls_key: cannot load {tls.cert} with {tls.key}: {exc}"
        ) from exc


# -- the token ----------------------------------------------------------


def generate_token() -> bytes:
    """256 random bits, as the 64 hex characters a token file holds."""
    return secrets.token_hex(TOKEN_BYTES).encode()


def read_token_file(path: str, setting: str = "--token-file") -> bytes:
    """The token in ``path``: refused if others may read the file or it is too short."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{setting}: {path} is not a regular file")
        if st.st_mode & 0o077:
            raise ConfigError(
                f"{setting}: {path} may be read by other users (mode "
                f"{stat.S_IMODE(st.st_mode):04o}); chmod 600 it"
            )
        if st.st_uid != os.getuid():
            raise ConfigError(f"{setting}: {path} belongs to uid {st.st_uid}, not to this user")
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    token = data.strip()
    if len(token) < MIN_TOKEN_CHARS or b"\n" in token:
        raise ConfigError(
            f"{setting}: {path} must hold one token of at least {MIN_TOKEN_CHARS} characters "
            "(e.g. `openssl rand -hex 32`)"
        )
    return token


def write_token_file(path: str, token: bytes) -> None:
    """Write ``token`` to ``path`` (mode 0600), replacing it atomically."""
    tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, token + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def check_private_dir(path: str, create: bool = True, what: str = "directory") -> None:
    """Make sure ``path`` is a directory only this user can enter (0700, owned by us).

    An existing one owned by someone else, or that others may write to or
    enter, is refused: whoever controls it could replace what is in it.
    """
    if create:
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ObjectStoreError(f"{what} {path}: cannot create it: {exc.strerror}") from exc
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise ObjectStoreError(f"{what} {path}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise ObjectStoreError(f"{what} {path}: not a directory (a symlink or a file is refused)")
    if st.st_uid != os.getuid():
        raise ObjectStoreError(
            f"{what} {path}: belongs to uid {st.st_uid}, not to this user ({os.getuid()}); "
            "another user may control what is in it. Remove it or choose another path"
        )
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ObjectStoreError(
            f"{what} {path}: mode {stat.S_IMODE(st.st_mode):04o} lets other users in; "
            "it must be 0700 (chmod 700 it, or remove it)"
        )


def cache_dir(env: Mapping[str, str] | None = None) -> str:
    """Where the head leaves tokens for the same user's nodes and tools on this machine.

    ``$XDG_RUNTIME_DIR/objstore`` when the runtime directory exists, else
    ``$XDG_CONFIG_HOME/objstore/tokens`` (``~/.config/objstore/tokens``).
    """
    env = os.environ if env is None else env
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isdir(runtime):
        return os.path.join(runtime, "objstore")
    config = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(config, "objstore", "tokens")


_LOOPBACK = {"localhost", "0.0.0.0", "::", "::1", "", "ip6-localhost"}


def _address_key(address: str) -> str:
    """``HOST:PORT`` as a file name; loopback and wildcard hosts are one key."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]").lower()
    if host in _LOOPBACK or host.startswith("127."):
        host = "127.0.0.1"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{host}_{port}")


def cache_path(address: str, env: Mapping[str, str] | None = None) -> str:
    """The file holding the token of the directory at ``address`` on this machine."""
    return os.path.join(cache_dir(env), f"token-{_address_key(address)}")


def publish_token(address: str, token: bytes) -> str:
    """Leave ``token`` where this user's nodes and CLI find it for ``address``."""
    path = cache_path(address)
    check_private_dir(os.path.dirname(path), what="token directory")
    write_token_file(path, token)
    return path


def unpublish_token(address: str, token: bytes) -> None:
    """Remove the published token of ``address`` if it is still ``token``."""
    path = cache_path(address)
    with contextlib.suppress(OSError, ConfigError):
        if hmac.compare_digest(read_token_file(path), token):
            os.unlink(path)


def _tls_from(security: SecurityConfig) -> TlsFiles | None:
    cert, key, ca = security.tls_cert, security.tls_key, security.tls_ca
    if not (cert or key or ca):
        return None
    if not (cert and key and ca):
        raise ConfigError(
            "security.tls_cert, tls_key and tls_ca: give all three (mutual TLS) or none"
        )
    for name, path in (("tls_cert", cert), ("tls_key", key), ("tls_ca", ca)):
        if not os.path.isfile(path):
            raise ConfigError(f"security.{name}: no such file {path}")
    return TlsFiles(cert, key, ca)


def add_credential_flags(parser: argparse.ArgumentParser, who: str, token_default: str) -> None:
    """``--token-file``, ``--insecure`` and ``--tls-*`` for ``who`` ("node", "tool")."""
    sec = parser.add_argument_group("security (see the README's Security section)")
    sec.add_argument("--token-file", metavar="FILE", help=f"the cluster token ({token_default})")
    sec.add_argument(
        "--insecure", action="store_true", help="no authentication (a cluster run --insecure)"
    )
    sec.add_argument("--tls-cert", metavar="PEM", help=f"this {who}'s certificate (mutual TLS)")
    sec.add_argument("--tls-key", metavar="PEM", help=f"this {who}'s private key")
    sec.add_argument("--tls-ca", metavar="PEM", help="the CA that signs the cluster's certificates")


def security_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The ``security`` settings the flags of :func:`add_credential_flags` gave."""
    out: dict[str, Any] = {
        key: value
        for key in ("token_file", "tls_cert", "tls_key", "tls_ca")
        if (value := getattr(args, key)) is not None
    }
    if args.insecure:
        out["insecure"] = True
    return out


def _given(security: SecurityConfig, env: Mapping[str, str]) -> Credentials | None:
    """Credentials the settings name outright (--insecure, or a token file); else None."""
    tls = _tls_from(security)
    if security.insecure:
        return Credentials(None, tls, "insecure")
    path = security.token_file or env.get("OBJSTORE_TOKEN_FILE", "")
    if path:
        return Credentials(read_token_file(path), tls, path)
    return None


def head_credentials(
    security: SecurityConfig, state_dir: str = "", env: Mapping[str, str] | None = None
) -> Credentials:
    """The head's credentials: its token file, the state dir's token, or a new one."""
    env = os.environ if env is None else env
    given = _given(security, env)
    if given is not None:
        return given
    tls = _tls_from(security)
    if state_dir:
        path = os.path.join(state_dir, TOKEN_FILE_NAME)
        if os.path.exists(path):
            return Credentials(read_token_file(path, "--state-dir token"), tls, path)
        check_private_dir(state_dir, what="--state-dir")
        token = generate_token()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:  # another start raced us: use its token
            return Credentials(read_token_file(path, "--state-dir token"), tls, path)
        with os.fdopen(fd, "wb") as fh:
            fh.write(token + b"\n")
        return Credentials(token, tls, path)
    return Credentials(generate_token(), tls, "generated")


def member_credentials(
    security: SecurityConfig, directory: str, env: Mapping[str, str] | None = None
) -> Credentials:
    """Credentials of a node joining ``directory``, or of a tool talking to it.

    ``--token-file`` / ``$OBJSTORE_TOKEN_FILE``, else the token the head
    published on this machine; a ConfigError naming both when neither exists.
    """
    env = os.environ if env is None else env
    given = _given(security, env)
    if given is not None:
        return given
    cached = cache_path(directory, env)
    if os.path.exists(cached):
        return Credentials(
            read_token_file(cached, "the published token"), _tls_from(security), cached
        )
    raise ConfigError(
        f"no cluster token for the directory at {directory}: the head publishes it in "
        f"{cached} for nodes of the same user on its machine; elsewhere pass --token-file "
        "FILE (or set OBJSTORE_TOKEN_FILE) with a copy of the head's token, or --insecure "
        "if the cluster runs without authentication"
    )


# -- MACs ---------------------------------------------------------------


def _mac(token: bytes, label: bytes, *parts: bytes) -> bytes:
    """HMAC-SHA256 under the token of a label and length-prefixed parts."""
    m = hmac.new(token, label, hashlib.sha256)
    for p in parts:
        m.update(struct.pack("<I", len(p)))
        m.update(p)
    return m.digest()


def http_key(token: bytes) -> bytes:
    """The bearer key of a node's HTTP endpoints: derived from the token, not the token.

    It opens the HTTP endpoints only; the token cannot be computed from it.
    """
    return _mac(token, b"objstore http v1").hex().encode()


# -- directory proofs -----------------------------------------------------

METADATA_KEY = "authorization"
# A proof is refused once it is older (or further in the future) than this:
# clocks of a cluster's machines must agree within it (NTP does).
PROOF_WINDOW_S = 120.0
_DIR_LABEL = b"objstore directory v1"
_PROOF_RE = re.compile(
    r"^v1\.([A-Za-z0-9_-]{22})\.([0-9]{1,19})\.([0-9]{1,12})\.([A-Za-z0-9_-]{22})$"
)
# Bytes of the HMAC a proof carries (an online forgery has a 2**-128 chance).
_PROOF_MAC = 16
# Counters of one channel accepted out of order (HTTP/2 streams may overtake).
_REPLAY_WINDOW = 1024


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class ChannelProver:
    """Makes the proof each request of one gRPC channel carries."""

    def __init__(self, token: bytes) -> None:
        self._token = token
        self.channel = secrets.token_urlsafe(16)
        self._counter = 0

    def proof(self, method: str, now: float | None = None) -> str:
        self._counter += 1
        ts = int(time.time() if now is None else now)
        mac = _mac(
            self._token,
            _DIR_LABEL,
            method.encode(),
            self.channel.encode(),
            str(self._counter).encode(),
            str(ts).encode(),
        )
        return f"v1.{self.channel}.{self._counter}.{ts}.{_b64(mac[:_PROOF_MAC])}"


@dataclass
class _ChannelSeen:
    highest: int
    bitmap: int  # bit i: counter highest - i was seen
    last: float


class ProofVerifier:
    """Checks directory proofs: the MAC, the time, and that none is used twice."""

    def __init__(self, token: bytes, window_s: float = PROOF_WINDOW_S) -> None:
        self._token = token
        self.window_s = window_s
        self._seen: dict[str, _ChannelSeen] = {}
        self._next_prune = 0.0

    def check(self, value: str | None, method: str, now: float | None = None) -> str | None:
        """None if ``value`` proves the token for ``method``; else why not."""
        if not value:
            return "no credentials"
        match = _PROOF_RE.match(value)
        if not match:
            return "malformed credentials"
        channel, counter_s, ts_s, mac_hex = match.groups()
        expected = _mac(
            self._token,
            _DIR_LABEL,
            method.encode(),
            channel.encode(),
            counter_s.encode(),
            ts_s.encode(),
        )
        if not hmac.compare_digest(_b64(expected[:_PROOF_MAC]), mac_hex):
            return "wrong credentials"
        now = time.time() if now is None else now
        if abs(now - int(ts_s)) > self.window_s:
            return "expired credentials (are the clocks of the two machines apart?)"
        if not self._fresh(channel, int(counter_s), now):
            return "replayed credentials"
        return None

    def _fresh(self, channel: str, counter: int, now: float) -> bool:
        if now >= self._next_prune:
            self._prune(now)
        seen = self._seen.get(channel)
        if seen is None:
            self._seen[channel] = _ChannelSeen(counter, 1, now)
            return True
        seen.last = now
        if counter > seen.highest:
            shift = counter - seen.highest
            seen.bitmap = ((seen.bitmap << shift) | 1) & ((1 << _REPLAY_WINDOW) - 1)
            seen.highest = counter
            return True
        back = seen.highest - counter
        if back >= _REPLAY_WINDOW or seen.bitmap >> back & 1:
            return False
        seen.bitmap |= 1 << back
        return True

    def _prune(self, now: float) -> None:
        # A channel silent for a window can only send fresh proofs: a replay of
        # anything it sent before is refused by its age.
        cutoff = now - 2 * self.window_s
        for channel in [c for c, s in self._seen.items() if s.last < cutoff]:
            del self._seen[channel]
        self._next_prune = now + self.window_s / 4

    def channels(self) -> int:
        """Channels remembered (tests)."""
        return len(self._seen)


# -- data plane handshake ---------------------------------------------------

HANDSHAKE_MAGIC = b"OSXA"
_HS_VERSION = 1
_NONCE = 32
# Puller -> server: magic, version, 3 spare bytes, its nonce, 4 spare bytes
# (44 bytes: a server that does not authenticate reads it as a bad request).
CLIENT_HELLO = struct.Struct("<4sB3s32s4s")
# Server -> puller: magic, version, 3 spare, server nonce, MAC over both nonces.
SERVER_CHALLENGE = struct.Struct("<4sB3s32s32s")
CLIENT_ANSWER_SIZE = 32
# Server -> puller after the answer: 4 bytes, accepted or refused.
VERDICT_OK = b"OSXK"
VERDICT_REFUSED = b"OSXN"
_SERVER_LABEL = b"objstore data plane v1 server"
_CLIENT_LABEL = b"objstore data plane v1 client"


class ClientHandshake:
    """The puller's side: :meth:`hello`, then :meth:`answer` the server's challenge."""

    def __init__(self, token: bytes) -> None:
        self._token = token
        self._nonce = secrets.token_bytes(_NONCE)

    def hello(self) -> bytes:
        return CLIENT_HELLO.pack(HANDSHAKE_MAGIC, _HS_VERSION, b"\0" * 3, self._nonce, b"\0" * 4)

    def answer(self, challenge: bytes) -> bytes:
        """The answer to the server's challenge; AuthenticationError if the server
        does not know the token."""
        if len(challenge) != SERVER_CHALLENGE.size:
            raise AuthenticationError("the peer's challenge is malformed")
        magic, version, _, server_nonce, server_mac = SERVER_CHALLENGE.unpack(challenge)
        if magic != HANDSHAKE_MAGIC or version != _HS_VERSION:
            raise AuthenticationError(
                "the peer did not answer the authentication handshake (is it running --insecure?)"
            )
        expected = _mac(self._token, _SERVER_LABEL, self._nonce, server_nonce)
        if not hmac.compare_digest(expected, server_mac):
            raise AuthenticationError("the peer does not know the cluster token")
        return _mac(self._token, _CLIENT_LABEL, server_nonce, self._nonce)


def server_challenge(token: bytes, hello: bytes) -> tuple[bytes, bytes] | None:
    """The challenge to send for a puller's hello, and the answer to expect.

    None if ``hello`` is not a handshake's first message.
    """
    if len(hello) != CLIENT_HELLO.size:
        return None
    magic, version, _, client_nonce, _ = CLIENT_HELLO.unpack(hello)
    if magic != HANDSHAKE_MAGIC or version != _HS_VERSION:
        return None
    server_nonce = secrets.token_bytes(_NONCE)
    mac = _mac(token, _SERVER_LABEL, client_nonce, server_nonce)
    challenge = SERVER_CHALLENGE.pack(HANDSHAKE_MAGIC, _HS_VERSION, b"\0" * 3, server_nonce, mac)
    return challenge, _mac(token, _CLIENT_LABEL, server_nonce, client_nonce)


def check_client_answer(expected: bytes, answer: bytes) -> bool:
    """Whether the puller's answer proves the token (constant time)."""
    return len(answer) == CLIENT_ANSWER_SIZE and hmac.compare_digest(expected, answer)
