"""Tests for the local protocol framing and error mapping (objstore.protocol)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from objstore import errors
from objstore.plasma.lifecycle import InvalidTransition, ObjectEvent, ObjectState
from objstore.protocol import (
    HEADER,
    FrameDecoder,
    encode_frame,
    error_to_exception,
    exception_to_error,
    pb,
)

MAX = 1024


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    out, prev = [], 0
    for p in [*points, len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


def decode_all(dec: FrameDecoder, pieces: list[bytes]) -> list[bytes]:
    frames: list[bytes] = []
    for piece in pieces:
        frames.extend(dec.feed(piece))
    return frames


def test_encode_frame() -> None:
    assert encode_frame(b"abc") == b"\x03\x00\x00\x00abc"
    assert encode_frame(b"") == b"\x00\x00\x00\x00"
    assert HEADER.size == 4


def test_single_feed_many_frames() -> None:
    frames = [b"one", b"", b"three", b"x" * MAX]
    dec = FrameDecoder(MAX)
    assert list(dec.feed(b"".join(map(encode_frame, frames)))) == frames
    assert dec.pending == 0


def test_split_at_every_byte_boundary() -> None:
    frames = [b"alpha", b"", b"b" * 300, b"\x00\x01\x02"]
    stream = b"".join(map(encode_frame, frames))
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1):
            dec = FrameDecoder(MAX)
            got = decode_all(dec, [stream[:i], stream[i:j], stream[j:]])
            assert got == frames, (i, j)
            assert dec.pending == 0


def test_byte_by_byte_and_pending() -> None:
    payload = b"hello world"
    stream = encode_frame(payload) + encode_frame(b"!")
    dec = FrameDecoder(MAX)
    seen: list[bytes] = []
    first_len = 4 + len(payload)
    for i, byte in enumerate(stream):
        seen.extend(dec.feed(bytes([byte])))
        done = i + 1
        if done < first_len:
            assert dec.pending == done
            assert seen == []
        elif done == first_len:
            assert dec.pending == 0
            assert seen == [payload]
        elif done < len(stream):
            assert dec.pending == done - first_len
    assert seen == [payload, b"!"]
    assert dec.pending == 0


def test_pending_after_complete_frames_and_partial() -> None:
    dec = FrameDecoder(MAX)
    data = encode_frame(b"abc") + encode_frame(b"defgh")[:6]
    assert list(dec.feed(data)) == [b"abc"]
    assert dec.pending == 6
    assert list(dec.feed(b"fgh")) == [b"defgh"]
    assert dec.pending == 0
    assert list(dec.feed(b"")) == []
    assert dec.pending == 0


def test_feed_accepts_memoryview_and_bytearray() -> None:
    stream = encode_frame(b"abc") + encode_frame(b"de")
    dec = FrameDecoder(MAX)
    assert list(dec.feed(memoryview(stream)[:5])) == []
    assert list(dec.feed(bytearray(stream[5:]))) == [b"abc", b"de"]
    assert dec.pending == 0


def test_frames_are_independent_copies() -> None:
    dec = FrameDecoder(MAX)
    buf = bytearray(encode_frame(b"abc"))
    (frame,) = dec.feed(buf)
    buf[4:7] = b"xyz"
    assert frame == b"abc"
    assert type(frame) is bytes


@pytest.mark.parametrize("split", [None, 1, 2, 3, 4])
def test_oversized_frame(split: int | None) -> None:
    dec = FrameDecoder(MAX)
    assert list(dec.feed(encode_frame(b"y" * MAX))) == [b"y" * MAX]  # the limit itself is fine
    header = HEADER.pack(MAX + 1)
    with pytest.raises(errors.ProtocolError, match=f"{MAX + 1} bytes.*limit of {MAX}"):
        if split is None:
            list(dec.feed(header))
        else:
            list(dec.feed(header[:split]))
            list(dec.feed(header[split:]))


def test_oversized_frame_after_good_ones() -> None:
    dec = FrameDecoder(MAX)
    got: list[bytes] = []
    with pytest.raises(errors.ProtocolError):
        got.extend(dec.feed(encode_frame(b"ok") + HEADER.pack(2**32 - 1) + b"junk"))
    assert got == [b"ok"]


frame_lists = st.lists(st.binary(max_size=64), max_size=8)


@settings(max_examples=300, deadline=None)
@given(frames=frame_lists, cuts=st.lists(st.integers(0, 700), max_size=30))
def test_random_chunkings_reassemble(frames: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(map(encode_frame, frames))
    dec = FrameDecoder(64)
    got: list[bytes] = []
    fed = 0
    for piece in chunks(stream, cuts):
        got.extend(dec.feed(piece))
        fed += len(piece)
        # everything fed is either in a yielded frame or pending
        assert sum(4 + len(f) for f in got) + dec.pending == fed
        assert got == frames[: len(got)]
    assert got == frames
    assert dec.pending == 0


@settings(max_examples=100, deadline=None)
@given(frames=frame_lists, sizes=st.lists(st.integers(1, 17), min_size=1, max_size=10))
def test_fixed_size_chunkings_reassemble(frames: list[bytes], sizes: list[int]) -> None:
    stream = b"".join(map(encode_frame, frames))
    dec = FrameDecoder(64)
    got: list[bytes] = []
    pos = i = 0
    while pos < len(stream):
        n = sizes[i % len(sizes)]
        got.extend(dec.feed(stream[pos : pos + n]))
        pos += n
        i += 1
    assert got == frames
    assert dec.pending == 0


# ---------------------------------------------------------------- errors

MAPPED = {
    errors.ObjectStoreFullError: pb.ERROR_CODE_STORE_FULL,
    errors.OutOfDiskError: pb.ERROR_CODE_OUT_OF_DISK,
    errors.ObjectNotFoundError: pb.ERROR_CODE_NOT_FOUND,
    errors.ObjectExistsError: pb.ERROR_CODE_EXISTS,
    errors.ObjectLostError: pb.ERROR_CODE_LOST,
    errors.GetTimeoutError: pb.ERROR_CODE_TIMEOUT,
    errors.ProtocolError: pb.ERROR_CODE_PROTOCOL,
    errors.NodeUnavailableError: pb.ERROR_CODE_UNAVAILABLE,
    errors.AuthenticationError: pb.ERROR_CODE_UNAUTHENTICATED,
    errors.ObjectFreedError: pb.ERROR_CODE_FREED,
    errors.OwnerDiedError: pb.ERROR_CODE_OWNER_DIED,
    errors.ObjectReconstructionFailedError: pb.ERROR_CODE_RECONSTRUCTION_FAILED,
    errors.ObjectFetchTimedOutError: pb.ERROR_CODE_FETCH_TIMED_OUT,
    # No code of their own: they travel as INVALID and come back as the base class.
    errors.ObjectStoreError: pb.ERROR_CODE_INVALID,
    errors.ConfigError: pb.ERROR_CODE_INVALID,
    errors.SerializationError: pb.ERROR_CODE_INVALID,
    errors.InvalidRequestError: pb.ERROR_CODE_INVALID,
    errors.NotRegisteredError: pb.ERROR_CODE_INVALID,
    errors.TooManySubscriptionsError: pb.ERROR_CODE_INVALID,
}


def test_every_error_class_is_covered() -> None:
    assert set(MAPPED) == {getattr(errors, name) for name in errors.__all__}


@pytest.mark.parametrize("cls", list(MAPPED), ids=lambda c: c.__name__)
def test_error_round_trip(cls: type[errors.ObjectStoreError]) -> None:
    message = f"something about {cls.__name__} 'quoted'"
    err = pb.Error()
    exception_to_error(cls(message), err)
    assert err.code == MAPPED[cls]
    assert err.message == message
    # through the wire
    err2 = pb.Error.FromString(err.SerializeToString())
    exc = error_to_exception(err2)
    expected = cls if MAPPED[cls] != pb.ERROR_CODE_INVALID else errors.ObjectStoreError
    assert type(exc) is expected
    assert str(exc) == message
    assert isinstance(exc, errors.ObjectStoreError)


def test_builtin_bases_survive_round_trip() -> None:
    def back(exc: BaseException) -> errors.ObjectStoreError:
        err = pb.Error()
        exception_to_error(exc, err)
        return error_to_exception(err)

    assert isinstance(back(errors.ObjectNotFoundError("k")), KeyError)
    assert isinstance(back(errors.GetTimeoutError("t")), TimeoutError)
    assert isinstance(back(errors.ObjectStoreFullError("f")), MemoryError)
    assert isinstance(back(errors.NodeUnavailableError("u")), ConnectionError)
    assert isinstance(back(errors.OutOfDiskError("d")), OSError)


def test_subclasses_map_to_their_base_code() -> None:
    class Custom(errors.ObjectNotFoundError):
        pass

    err = pb.Error()
    exception_to_error(Custom("gone"), err)
    assert err.code == pb.ERROR_CODE_NOT_FOUND
    err = pb.Error()
    exception_to_error(InvalidTransition(ObjectState.SEALED, ObjectEvent.SEAL, b"\x01"), err)
    assert err.code == pb.ERROR_CODE_INVALID
    assert "SEAL" in err.message and "01" in err.message


@pytest.mark.parametrize(
    "exc", [ValueError("bad"), KeyError("k"), RuntimeError("r"), TimeoutError("t")]
)
def test_foreign_exceptions_are_invalid(exc: BaseException) -> None:
    err = pb.Error()
    exception_to_error(exc, err)
    assert err.code == pb.ERROR_CODE_INVALID
    assert err.message == str(exc)
    assert type(error_to_exception(err)) is errors.ObjectStoreError


def test_unknown_codes_become_base_error() -> None:
    for code in (pb.ERROR_CODE_UNSPECIFIED, pb.ERROR_CODE_INVALID):
        exc = error_to_exception(pb.Error(code=code, message="m"))
        assert type(exc) is errors.ObjectStoreError
        assert str(exc) == "m"
