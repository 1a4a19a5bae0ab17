"""Where the node's socket lives, and that no other user can replace it.

Whoever can write to the socket's directory can remove ``node.sock`` and bind
their own in its place: every client would then hand its objects to them and
map memory they control.  So before binding, the node checks the directory:

* **Its own directory** (the default ``$TMPDIR/objstore-<uid>``, which the
  node creates): it must be a real directory owned by this uid with mode 0700
  (0711 while ``node.allowed_uids``/``allowed_gids`` let other users reach
  the socket: they may enter it, not list or change it).  A directory someone
  else created first, or that others may write to, is refused; the ones
  above it are held to the next rule.
* **A directory the user chose** (``--socket PATH``): the directory and every
  directory above it must belong to this uid or to root, and must not be
  writable by other users unless it has the sticky bit (``/tmp`` is fine, a
  0755 directory of our own is fine, a 0777 one is not).

Refusals raise :class:`~objstore.errors.ObjectStoreError` naming the path,
what is wrong with it and what to do; the node exits 1 (``objstore.node:
cannot start: ...``).  (A bad setting, such as a directory that does not
exist, stays a :class:`~objstore.errors.ConfigError`: exit 2.)
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat

import structlog

from objstore.errors import ConfigError, ObjectStoreError

__all__ = ["prepare_socket_dir", "prepare_socket_path", "check_user_dir", "reachable_by_others"]

log = structlog.get_logger("objstore.plasma.server")

# The modes of the node's own directory: private, or enterable (not listable)
# by the other users the node admits.
PRIVATE_DIR_MODE = 0o700
SHARED_DIR_MODE = 0o711


def _describe(st: os.stat_result) -> str:
    return f"owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}"


def prepare_socket_dir(directory: str, shared: bool) -> None:
    """Create (or check) the node's own socket directory and set its mode.

    ``shared``: other uids are admitted (``node.allowed_uids``/``gids``), so
    the directory is left 0711 instead of 0700.  The directories above it
    are held to :func:`check_user_dir`'s rules (whoever may write to
    ``$TMPDIR`` without the sticky bit could rename ours away).
    """
    check_user_dir(os.path.dirname(os.path.abspath(directory)), above=True)
    try:
        os.mkdir(directory, PRIVATE_DIR_MODE)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(
            f"plasma.socket: cannot create the socket directory {directory}: {exc.strerror}"
        ) from exc
    try:
        # O_NOFOLLOW: a symlink planted in its place is refused, not followed.
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ObjectStoreError(
            f"plasma.socket: the socket directory {directory} is not a directory of its own "
            f"({exc.strerror}); remove it, or pass --socket PATH"
        ) from exc
    try:
        st = os.fstat(fd)
        uid = os.getuid()
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid != uid:
            raise ObjectStoreError(
                f"plasma.socket: the socket directory {directory} belongs to another user "
                f"({_describe(st)}; this node runs as uid {uid}): whoever owns it can replace "
                "the node's socket. Remove it (as its owner or root) or pass --socket PATH"
            )
        if mode not in (PRIVATE_DIR_MODE, SHARED_DIR_MODE):
            raise ObjectStoreError(
                f"plasma.socket: the socket directory {directory} has mode {mode:04o}: other "
                "users may have changed what is in it. It must be 0700; remove it (the node "
                "makes a new one) or pass --socket PATH"
            )
        want = SHARED_DIR_MODE if shared else PRIVATE_DIR_MODE
        if mode != want:
            os.fchmod(fd, want)
    finally:
        os.close(fd)


def check_user_dir(directory: str, above: bool = False) -> None:
    """Refuse a chosen socket directory that another user could change.

    The directory and each one above it must belong to this uid or to root,
    and may be writable by others only with the sticky bit (``/tmp``).
    ``above``: ``directory`` is itself above the socket's (messages say so).
    """
    if not os.path.isdir(directory):
        raise ConfigError(f"plasma.socket: the directory {directory} does not exist")
    uid = os.getuid()
    path = top = os.path.realpath(directory)
    while True:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise ConfigError(f"plasma.socket: cannot check {path}: {exc.strerror}") from exc
        mode = st.st_mode
        where = (
            "the socket directory" if path == top and not above else "a directory above the socket"
        )
        if st.st_uid not in (uid, 0):
            raise ObjectStoreError(
                f"plasma.socket: {where}, {path}, belongs to another user ({_describe(st)}; "
                f"this node runs as uid {uid}): that user could replace the node's socket. "
                "Choose a --socket PATH in a directory of your own"
            )
        if mode & (stat.S_IWGRP | stat.S_IWOTH) and not mode & stat.S_ISVTX:
            raise ObjectStoreError(
                f"plasma.socket: {where}, {path}, may be written by other users "
                f"({_describe(st)}, no sticky bit): they could replace the node's socket. "
                f"chmod go-w {path}, or choose a --socket PATH in a directory of your own"
            )
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


def reachable_by_others(directory: str) -> bool:
    """Whether users other than the owner may pass through ``directory``."""
    try:
        mode = os.stat(directory).st_mode
    except OSError:
        return False
    return bool(mode & stat.S_IXOTH)


def prepare_socket_path(path: str) -> None:
    """Check a socket path before binding: its directory exists, no live node owns it.

    A stale socket file (nothing accepts on it) is removed; one that another
    user left (in a sticky directory such as ``/tmp``) is refused.  Raises
    :class:`ConfigError` with a clear message otherwise.
    """
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ConfigError(f"plasma.socket: the directory {directory} does not exist")
    if len(os.fsencode(path)) > 107:
        raise ConfigError(f"plasma.socket: path is longer than 107 bytes: {path}")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"plasma.socket: {path} exists and is not a socket")
    if st.st_uid not in (os.getuid(), 0):
        raise ObjectStoreError(
            f"plasma.socket: {path} exists and belongs to another user ({_describe(st)}): "
            "it may be posing as a node. Choose another --socket PATH"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("removing stale socket file", path=path)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        except OSError as exc:
            raise ConfigError(
                f"plasma.socket: cannot remove the stale socket {path}: {exc.strerror}"
            ) from exc
        return
    except OSError as exc:
        raise ConfigError(f"plasma.socket: cannot check {path}: {exc.strerror}") from exc
    finally:
        probe.close()
    raise ConfigError(f"plasma.socket: a live node already serves {path}")
