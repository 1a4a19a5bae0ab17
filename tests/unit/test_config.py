"""Tests for configuration loading and validation (objstore.config)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from objstore.config import (
    Config,
    GiB,
    KiB,
    MiB,
    format_size,
    parse_size,
    physical_memory,
)
from objstore.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2GiB", 2 * GiB),
        ("512MiB", 512 * MiB),
        ("1.5GB", 1_500_000_000),
        ("100", 100),
        ("0", 0),
        ("4KiB", 4 * KiB),
        ("4 kib", 4 * KiB),
        (" 3MB ", 3_000_000),
        ("1.5GiB", 3 * GiB // 2),
        ("10b", 10),
        ("1T", 1000**4),
        ("1TiB", 1024**4),
        (100, 100),
        (0, 0),
        (64 * MiB, 64 * MiB),
    ],
)
def test_parse_size(text: int | str, expected: int) -> None:
    got = parse_size(text)
    assert got == expected
    assert type(got) is int


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (-1, "negative"),
        ("-5MiB", "negative"),
        ("-1", "negative"),
        ("banana", "cannot read 'banana'"),
        ("12 parsecs", "cannot read"),
        ("", "cannot read"),
        ("1.2.3GB", "cannot read"),
        (True, "expected a size"),
        (False, "expected a size"),
        (1.5, "expected a size"),
        (None, "expected a size"),
    ],
)
def test_parse_size_errors(value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        parse_size(value, "plasma.memory")  # type: ignore[arg-type]
    assert str(info.value).startswith("plasma.memory:")
    assert isinstance(info.value, ValueError)


def test_format_size() -> None:
    assert format_size(0) == "0 B"
    assert format_size(1023) == "1023 B"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(2 * GiB) == "2.0 GiB"


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "objstore.toml"
    path.write_text(text)
    return str(path)


def test_defaults() -> None:
    cfg = Config.load(env={})
    assert cfg == Config()
    assert cfg.plasma.memory == 0
    assert cfg.memory_bytes > 0 and cfg.memory_bytes % 4096 == 0
    assert cfg.memory_bytes <= physical_memory()
    assert cfg.node.log_format == "console"


def test_load_toml(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
[plasma]
memory = "8MiB"
fallback_max_bytes = 1048576
inline_max_bytes = "8KiB"

[spill]
threshold = 1
url = "s3://bucket/prefix"

[node]
head = true
port = 7000
log_format = "json"
directory = "10.0.0.1:6000"
""",
    )
    cfg = Config.load(path, env={})
    assert cfg.plasma.memory == 8 * MiB
    assert cfg.memory_bytes == 8 * MiB
    assert cfg.plasma.fallback_max_bytes == MiB
    assert cfg.plasma.inline_max_bytes == 8 * KiB
    assert cfg.spill.threshold == 1.0 and isinstance(cfg.spill.threshold, float)
    assert cfg.spill.url == "s3://bucket/prefix"
    assert cfg.node.head is True
    assert cfg.node.port == 7000
    assert cfg.node.log_format == "json"
    assert cfg.node.directory == "10.0.0.1:6000"
    # untouched settings keep their defaults
    assert cfg.transfer == Config().transfer
    assert cfg.plasma.deleted_memory == Config().plasma.deleted_memory


def test_env_overrides_toml_and_overrides_win(tmp_path: Path) -> None:
    path = _write(tmp_path, '[plasma]\nmemory = "8MiB"\ndeleted_memory = 10\n[node]\nport = 1\n')
    env = {
        "OBJSTORE_PLASMA_MEMORY": "16MiB",
        "OBJSTORE_PLASMA_FALLBACK_MAX_BYTES": "1GiB",
        "OBJSTORE_NODE_PORT": "2",
        "OBJSTORE_NODE_HEAD": "yes",
        "OBJSTORE_SPILL_THRESHOLD": "0.5",
        "OBJSTORE_NODE_LOOP_LAG_WARN_MS": "0",
        "OBJSTORE_SOCKET": "/tmp/ignored.sock",  # not a setting of a section
        "OBJSTORE_NOSUCHSECTION_X": "1",  # not ours: ignored
        "OTHER_PLASMA_MEMORY": "1",
    }
    cfg = Config.load(path, env=env)
    assert cfg.plasma.memory == 16 * MiB
    assert cfg.plasma.fallback_max_bytes == GiB
    assert cfg.plasma.deleted_memory == 10  # from TOML, not overridden
    assert cfg.node.port == 2
    assert cfg.node.head is True
    assert cfg.spill.threshold == 0.5
    assert cfg.node.loop_lag_warn_ms == 0.0

    cfg = Config.load(path, env=env, overrides={"plasma": {"memory": "32MiB"}, "node": {"port": 3}})
    assert cfg.plasma.memory == 32 * MiB
    assert cfg.node.port == 3
    assert cfg.plasma.fallback_max_bytes == GiB  # env still applies


def test_fetch_timeout_from_defaults_toml_and_env(tmp_path: Path) -> None:
    assert Config().transfer.fetch_timeout_s == 60.0
    assert Config.for_test().transfer.fetch_timeout_s == 60.0
    path = _write(tmp_path, "[transfer]\nfetch_timeout_s = 5\n")
    cfg = Config.load(path, env={})
    assert cfg.transfer.fetch_timeout_s == 5.0
    cfg = Config.load(path, env={"OBJSTORE_TRANSFER_FETCH_TIMEOUT_S": "0.5"})
    assert cfg.transfer.fetch_timeout_s == 0.5
    with pytest.raises(ConfigError, match=r"transfer\.fetch_timeout_s"):
        Config.load(env={"OBJSTORE_TRANSFER_FETCH_TIMEOUT_S": "0"})


def test_load_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBJSTORE_PLASMA_DELETED_MEMORY", "77")
    assert Config.load().plasma.deleted_memory == 77


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"OBJSTORE_NODE_HEAD": "maybe"}, "node.head: expected true or false"),
        ({"OBJSTORE_NODE_PORT": "eighty"}, "node.port: expected a whole number"),
        ({"OBJSTORE_SPILL_THRESHOLD": "most"}, "spill.threshold: expected a number"),
        ({"OBJSTORE_PLASMA_MEMORY": "lots"}, "plasma.memory: cannot read"),
        ({"OBJSTORE_PLASMA_BOGUS": "1"}, "plasma.bogus"),
    ],
)
def test_bad_env_values(env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Config.load(env=env)


def test_unknown_section_and_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown config section 'plasmaa'"):
        Config.load(_write(tmp_path, "[plasmaa]\nmemory = 1\n"), env={})
    with pytest.raises(ConfigError, match=r"unknown setting plasma\.memroy"):
        Config.load(_write(tmp_path, "[plasma]\nmemroy = 1\n"), env={})
    with pytest.raises(ConfigError, match="'node' must be a table"):
        Config.load(_write(tmp_path, 'node = "x"\n'), env={})
    with pytest.raises(ConfigError, match="unknown config section 'bogus'"):
        Config().replace(bogus={"x": 1})
    with pytest.raises(ConfigError, match=r"unknown setting transfer\.chunk"):
        Config.load(env={}, overrides={"transfer": {"chunk": 1}})


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = _write(tmp_path, "[plasma\nmemory = \n")
    with pytest.raises(ConfigError, match="config file"):
        Config.load(bad, env={})
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="nope.toml"):
        Config.load(missing, env={})


@pytest.mark.parametrize(
    ("section", "values", "match"),
    [
        ("plasma", {"memory": physical_memory() + GiB}, r"plasma\.memory: .* more than"),
        ("plasma", {"memory": 512 * KiB}, r"plasma\.memory: at least 1 MiB"),
        ("plasma", {"memory": -1}, r"plasma\.memory"),
        ("plasma", {"inline_max_bytes": 0}, r"plasma\.inline_max_bytes"),
        ("plasma", {"deleted_memory": -3}, r"plasma\.deleted_memory"),
        ("plasma", {"socket": 5}, r"plasma\.socket"),
        ("spill", {"threshold": 1.5}, r"spill\.threshold: must be a fraction"),
        ("spill", {"threshold": 0}, r"spill\.threshold"),
        ("spill", {"max_fused_object_count": True}, r"spill\.max_fused_object_count"),
        ("node", {"port": 70000}, r"node\.port: must be a TCP port"),
        ("node", {"port": -1}, r"node\.port"),
        ("node", {"directory_port": 65536}, r"node\.directory_port"),
        ("node", {"log_format": "xml"}, r"node\.log_format: must be one of console, json"),
        ("node", {"log_level": "loud"}, r"node\.log_level"),
        ("node", {"directory": 5}, r"node\.directory"),
        ("transfer", {"pull_timeout_s": 0}, r"transfer\.pull_timeout_s"),
        ("transfer", {"fetch_timeout_s": 0}, r"transfer\.fetch_timeout_s"),
        ("transfer", {"fetch_timeout_s": -1.0}, r"transfer\.fetch_timeout_s"),
        ("transfer", {"fetch_timeout_s": "soon"}, r"transfer\.fetch_timeout_s"),
        ("transfer", {"chunk_size": 2 * GiB}, r"transfer\.chunk_size"),
        ("directory", {"heartbeat_s": -1.0}, r"directory\.heartbeat_s"),
    ],
)
def test_bad_values_name_the_setting(section: str, values: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Config.load(env={}, overrides={section: values})
    with pytest.raises(ConfigError, match=match):
        Config().replace(**{section: values})


def test_bad_value_in_toml_names_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"node\.port"):
        Config.load(_write(tmp_path, "[node]\nport = 70000\n"), env={})


def test_for_test_sizes() -> None:
    cfg = Config.for_test()
    assert cfg.plasma.memory == 64 * MiB
    assert cfg.memory_bytes == 64 * MiB
    assert cfg.plasma.prefault_bytes == 0
    assert cfg.plasma.inline_max_bytes == 4 * KiB
    assert cfg.plasma.parallel_copy_min_bytes == 256 * KiB
    assert cfg.plasma.fallback_max_bytes == 256 * MiB
    assert cfg.transfer.chunk_size == 64 * KiB
    assert cfg.transfer.max_bytes_in_flight == MiB
    assert cfg.transfer.pull_timeout_s == 2.0
    assert cfg.spill.min_spilling_size == MiB
    # sections passed in change only what they name
    cfg2 = Config.for_test(plasma={"memory": 4 * MiB, "fallback_dir": "/x"})
    assert cfg2.plasma.memory == 4 * MiB
    assert cfg2.plasma.fallback_dir == "/x"
    assert cfg2.plasma.inline_max_bytes == 4 * KiB
    assert cfg2.transfer == cfg.transfer


def test_replace_returns_new_validated_copy() -> None:
    cfg = Config.for_test()
    other = cfg.replace(node={"port": 1234})
    assert other.node.port == 1234
    assert cfg.node.port == 0
    assert other.plasma == cfg.plasma


def test_frozen() -> None:
    cfg = Config.for_test()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.plasma.memory = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.plasma = cfg.plasma  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.node.port = 1  # type: ignore[misc]
    assert hash(cfg) == hash(Config.for_test())


def test_memory_bytes_rounds_to_pages() -> None:
    cfg = Config.load(env={}, overrides={"plasma": {"memory": 4 * MiB + 100}})
    assert cfg.memory_bytes == 4 * MiB


def test_describe_lists_every_section() -> None:
    d = Config.for_test().describe()
    assert set(d) == {
        "plasma",
        "transfer",
        "directory",
        "spill",
        "node",
        "security",
        "lifecycle",
    }
    assert d["plasma"]["memory"] == 64 * MiB


def test_socket_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBJSTORE_SOCKET", "/tmp/from-env.sock")
    assert Config().socket_path == "/tmp/from-env.sock"
    cfg = Config().replace(plasma={"socket": "/tmp/explicit.sock"})
    assert cfg.socket_path == "/tmp/explicit.sock"
    monkeypatch.delenv("OBJSTORE_SOCKET")
    assert Config().socket_path.endswith("node.sock")


def test_security_settings_from_env_toml_and_the_short_token_variable(tmp_path: Path) -> None:
    cfg = Config.load(env={"OBJSTORE_TOKEN_FILE": "/t", "OBJSTORE_NODE_ALLOWED_UIDS": "1000, 1001"})
    assert cfg.security.token_file == "/t"
    assert cfg.node.allowed_uids == (1000, 1001)
    toml = tmp_path / "c.toml"
    toml.write_text("[node]\nallowed_gids = [100]\n[security]\ninsecure = true\n")
    cfg = Config.load(str(toml), env={})
    assert cfg.node.allowed_gids == (100,) and cfg.security.insecure


@pytest.mark.parametrize("value", ["x", "1,-2", "99999999999"])
def test_bad_allowed_uids_name_the_setting(value: str) -> None:
    with pytest.raises(ConfigError, match="node.allowed_uids"):
        Config.load(env={"OBJSTORE_NODE_ALLOWED_UIDS": value})
