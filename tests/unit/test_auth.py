"""The cluster token, its files, and the proofs of it (objstore/auth.py)."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from objstore import auth
from objstore.auth import (
    CLIENT_ANSWER_SIZE,
    ChannelProver,
    ClientHandshake,
    Credentials,
    ProofVerifier,
    check_client_answer,
    server_challenge,
)
from objstore.config import SecurityConfig
from objstore.errors import AuthenticationError, ConfigError, ObjectStoreError

TOKEN = b"a" * 64
OTHER = b"b" * 64


def _token_file(tmp_path: Path, token: bytes = TOKEN, mode: int = 0o600) -> str:
    path = tmp_path / "token"
    path.write_bytes(token + b"\n")
    path.chmod(mode)
    return str(path)


# -- token files ----------------------------------------------------------


def test_generated_tokens_are_256_random_bits() -> None:
    a, b = auth.generate_token(), auth.generate_token()
    assert len(a) == 64 and int(a, 16) >= 0
    assert a != b


def test_token_file_round_trip_is_0600(tmp_path: Path) -> None:
    path = str(tmp_path / "t")
    auth.write_token_file(path, TOKEN)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert auth.read_token_file(path) == TOKEN
    assert [p.name for p in tmp_path.iterdir()] == ["t"]  # no temporary left


def test_a_token_file_others_may_read_is_refused(tmp_path: Path) -> None:
    path = _token_file(tmp_path, mode=0o644)
    with pytest.raises(ConfigError, match="may be read by other users.*chmod 600"):
        auth.read_token_file(path)


@pytest.mark.parametrize("content", [b"", b"short", b"x" * 31, b"a" * 40 + b"\n" + b"b" * 40])
def test_a_token_file_without_one_good_token_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "token"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="at least 32 characters"):
        auth.read_token_file(str(path))


def test_a_missing_token_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--token-file: cannot read .*nope"):
        auth.read_token_file(str(tmp_path / "nope"))


def test_a_symlinked_token_file_is_refused(tmp_path: Path) -> None:
    real = _token_file(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(ConfigError):
        auth.read_token_file(str(link))


# -- private directories ----------------------------------------------------


def test_private_dir_is_created_0700(tmp_path: Path) -> None:
    d = tmp_path / "a" / "b"
    auth.check_private_dir(str(d))
    assert stat.S_IMODE(d.stat().st_mode) == 0o700


@pytest.mark.parametrize("mode", [0o777, 0o755, 0o1777, 0o750])
def test_a_private_dir_others_may_enter_is_refused(tmp_path: Path, mode: int) -> None:
    d = tmp_path / "d"
    d.mkdir()
    d.chmod(mode)
    with pytest.raises(ObjectStoreError, match="lets other users in"):
        auth.check_private_dir(str(d))


@pytest.mark.skipif(
    os.getuid() != 0,
    reason="needs root to chown a directory to uid 65534 (CI runs as root, so this runs there)",
)
def test_a_private_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    os.chown(d, 65534, 65534)
    with pytest.raises(ObjectStoreError, match="belongs to uid 65534"):
        auth.check_private_dir(str(d))


def test_a_symlink_is_not_a_private_dir(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(ObjectStoreError, match="not a directory"):
        auth.check_private_dir(str(tmp_path / "link"), create=False)


# -- where tokens are found ---------------------------------------------------


def test_cache_dir_prefers_the_runtime_dir(tmp_path: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(tmp_path), "XDG_CONFIG_HOME": "/nowhere"}
    assert auth.cache_dir(env) == str(tmp_path / "objstore")
    env = {"XDG_RUNTIME_DIR": str(tmp_path / "missing"), "XDG_CONFIG_HOME": str(tmp_path)}
    assert auth.cache_dir(env) == str(tmp_path / "objstore" / "tokens")


@pytest.mark.parametrize(
    "address", ["127.0.0.1:7000", "localhost:7000", "0.0.0.0:7000", "[::1]:7000", "127.0.1.1:7000"]
)
def test_loopback_addresses_share_one_published_token(address: str, tmp_path: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    assert auth.cache_path(address, env) == auth.cache_path("127.0.0.1:7000", env)
    assert auth.cache_path("10.0.0.2:7000", env) != auth.cache_path(address, env)
    assert auth.cache_path("127.0.0.1:7001", env) != auth.cache_path(address, env)


def test_publish_then_member_finds_it_then_unpublish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delenv("OBJSTORE_TOKEN_FILE", raising=False)
    path = auth.publish_token("127.0.0.1:7000", TOKEN)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    creds = auth.member_credentials(SecurityConfig(), "localhost:7000")
    assert creds.token == TOKEN and creds.source == path
    auth.unpublish_token("127.0.0.1:7000", OTHER)  # another head's: left alone
    assert os.path.exists(path)
    auth.unpublish_token("127.0.0.1:7000", TOKEN)
    assert not os.path.exists(path)
    with pytest.raises(ConfigError, match="no cluster token for the directory at localhost:7000"):
        auth.member_credentials(SecurityConfig(), "localhost:7000")


def test_a_token_file_wins_over_the_published_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    auth.publish_token("127.0.0.1:7000", OTHER)
    path = _token_file(tmp_path)
    creds = auth.member_credentials(SecurityConfig(token_file=path), "127.0.0.1:7000")
    assert creds.token == TOKEN
    monkeypatch.setenv("OBJSTORE_TOKEN_FILE", path)
    assert auth.member_credentials(SecurityConfig(), "127.0.0.1:7000").token == TOKEN


def test_head_keeps_its_token_in_the_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OBJSTORE_TOKEN_FILE", raising=False)
    state = tmp_path / "state"
    first = auth.head_credentials(SecurityConfig(), str(state))
    assert first.token is not None and len(first.token) == 64
    assert stat.S_IMODE((state / "token").stat().st_mode) == 0o600
    again = auth.head_credentials(SecurityConfig(), str(state))
    assert again.token == first.token
    fresh = auth.head_credentials(SecurityConfig(), "")
    assert fresh.token != first.token and fresh.source == "generated"


def test_insecure_has_no_token_and_tls_needs_all_three_files(tmp_path: Path) -> None:
    creds = auth.head_credentials(SecurityConfig(insecure=True))
    assert creds.token is None and not creds.secure
    assert auth.member_credentials(SecurityConfig(insecure=True), "h:1").token is None
    with pytest.raises(ConfigError, match="give all three"):
        auth.head_credentials(SecurityConfig(tls_cert="c.pem"))
    with pytest.raises(ConfigError, match="security.tls_ca: no such file"):
        cert = tmp_path / "c.pem"
        cert.write_text("x")
        auth.head_credentials(
            SecurityConfig(tls_cert=str(cert), tls_key=str(cert), tls_ca=str(tmp_path / "no"))
        )


def test_credentials_never_print_the_token() -> None:
    creds = Credentials(TOKEN, None, "somewhere")
    assert TOKEN.decode() not in repr(creds) and TOKEN.decode() not in str(creds)


# -- directory proofs ----------------------------------------------------------

METHOD = "/objstore.directory.v1.Directory/ListObjects"


def test_a_proof_is_accepted_once() -> None:
    prover, verifier = ChannelProver(TOKEN), ProofVerifier(TOKEN)
    proof = prover.proof(METHOD)
    assert TOKEN.decode() not in proof
    assert verifier.check(proof, METHOD) is None
    assert verifier.check(proof, METHOD) == "replayed credentials"
    assert verifier.check(prover.proof(METHOD), METHOD) is None


def test_proofs_of_one_channel_may_arrive_out_of_order() -> None:
    prover, verifier = ChannelProver(TOKEN), ProofVerifier(TOKEN)
    proofs = [prover.proof(METHOD) for _ in range(50)]
    for p in reversed(proofs):
        assert verifier.check(p, METHOD) is None
    assert all(verifier.check(p, METHOD) == "replayed credentials" for p in proofs)
    assert verifier.channels() == 1


def test_a_proof_far_behind_the_channel_is_refused() -> None:
    prover, verifier = ChannelProver(TOKEN), ProofVerifier(TOKEN)
    old = prover.proof(METHOD)
    for _ in range(2000):
        assert verifier.check(prover.proof(METHOD), METHOD) is None
    assert verifier.check(old, METHOD) == "replayed credentials"


def test_wrong_token_method_or_time_is_refused() -> None:
    verifier = ProofVerifier(TOKEN)
    assert verifier.check(ChannelProver(OTHER).proof(METHOD), METHOD) == "wrong credentials"
    other_method = "/objstore.directory.v1.Directory/Delete"
    assert verifier.check(ChannelProver(TOKEN).proof(METHOD), other_method) == "wrong credentials"
    old = ChannelProver(TOKEN).proof(METHOD, now=time.time() - 3600)
    assert verifier.check(old, METHOD).startswith("expired")  # type: ignore[union-attr]
    ahead = ChannelProver(TOKEN).proof(METHOD, now=time.time() + 3600)
    assert verifier.check(ahead, METHOD).startswith("expired")  # type: ignore[union-attr]
    assert verifier.check(None, METHOD) == "no credentials"
    assert verifier.check("Bearer " + TOKEN.decode(), METHOD) == "malformed credentials"
    assert verifier.channels() == 0  # refusals leave nothing behind


def test_a_tampered_proof_is_refused() -> None:
    proof = ChannelProver(TOKEN).proof(METHOD)
    parts = proof.split(".")
    parts[2] = str(int(parts[2]) + 1)  # another counter, same MAC
    assert ProofVerifier(TOKEN).check(".".join(parts), METHOD) == "wrong credentials"


@given(st.text(max_size=300))
def test_garbage_proofs_are_refused(value: str) -> None:
    assert ProofVerifier(TOKEN).check(value, METHOD) is not None


def test_silent_channels_are_forgotten() -> None:
    verifier = ProofVerifier(TOKEN, window_s=10)
    now = time.time()
    for _ in range(5):
        assert verifier.check(ChannelProver(TOKEN).proof(METHOD, now), METHOD, now) is None
    assert verifier.channels() == 5
    later = now + 25
    assert verifier.check(ChannelProver(TOKEN).proof(METHOD, later), METHOD, later) is None
    assert verifier.channels() == 1


# -- data plane handshake --------------------------------------------------------


def test_handshake_both_sides_prove_the_token() -> None:
    client = ClientHandshake(TOKEN)
    got = server_challenge(TOKEN, client.hello())
    assert got is not None
    challenge, expected = got
    answer = client.answer(challenge)
    assert len(answer) == CLIENT_ANSWER_SIZE
    assert check_client_answer(expected, answer)
    assert TOKEN not in client.hello() + challenge + answer


def test_a_server_without_the_token_is_found_out() -> None:
    client = ClientHandshake(TOKEN)
    got = server_challenge(OTHER, client.hello())
    assert got is not None
    with pytest.raises(AuthenticationError, match="does not know the cluster token"):
        client.answer(got[0])


def test_a_client_without_the_token_is_refused() -> None:
    got = server_challenge(TOKEN, ClientHandshake(OTHER).hello())
    assert got is not None
    challenge, expected = got
    # What a client with another token would answer: the same MAC under its token.
    forged = auth._mac(OTHER, b"objstore data plane v1 client", challenge[8:40], b"")
    assert not check_client_answer(expected, forged)
    assert not check_client_answer(expected, os.urandom(CLIENT_ANSWER_SIZE))
    assert not check_client_answer(expected, expected[:-1])


def test_a_replayed_answer_does_not_fit_a_new_challenge() -> None:
    client = ClientHandshake(TOKEN)
    hello = client.hello()
    first = server_challenge(TOKEN, hello)
    assert first is not None
    answer = client.answer(first[0])
    second = server_challenge(TOKEN, hello)  # the same hello replayed: a new server nonce
    assert second is not None
    assert not check_client_answer(second[1], answer)


def test_the_server_answer_cannot_be_reflected_as_the_client_answer() -> None:
    client = ClientHandshake(TOKEN)
    got = server_challenge(TOKEN, client.hello())
    assert got is not None
    challenge, expected = got
    server_mac = challenge[-32:]
    assert not check_client_answer(expected, server_mac)


@given(st.binary(max_size=100))
def test_garbage_is_not_a_hello(data: bytes) -> None:
    if data[:4] == auth.HANDSHAKE_MAGIC and len(data) == auth.CLIENT_HELLO.size:
        return
    assert server_challenge(TOKEN, data) is None


def test_a_plain_request_is_not_a_hello() -> None:
    from objstore.transfer import wire

    request = wire.encode_request(wire.FETCH, b"x" * 20, 0, 100)
    assert len(request) == auth.CLIENT_HELLO.size
    assert server_challenge(TOKEN, request) is None
