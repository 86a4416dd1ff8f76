"""Configuration: the shipped config.yaml is valid, and bad values fail with a message that
names the key, the bad value and what is allowed (table-driven)."""

from __future__ import annotations

from pathlib import Path

import pytest

from soundwatch.config import Config, apply_overrides, load_config, parse_config
from soundwatch.errors import SoundwatchError

REPO = Path(__file__).resolve().parent.parent


def test_shipped_config_is_valid_and_matches_defaults() -> None:
    assert load_config(REPO / "config.yaml") == Config()


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == Config()


BAD_CONFIGS = [
    # (yaml data, substrings the one error message must contain)
    ({"modle": {"name": "mn04"}}, ["modle", "unknown key"]),
    ({"model": {"nmae": "mn04"}}, ["model.nmae", "unknown key"]),
    ({"model": {"name": "mn99"}}, ["model.name", "mn99", "mn04", "dymn10"]),
    ({"model": {"threads": 0}}, ["model.threads", "greater than or equal to 1", "0"]),
    ({"model": {"device": "tpu"}}, ["model.device", "tpu", "cuda"]),
    ({"windows": {"window": "long"}}, ["windows.window", "long", "number"]),
    ({"windows": {"window": 1.0, "hop": 2.0}}, ["windows", "hop", "window"]),
    ({"windows": {"hop": 0.0}}, ["windows.hop", "greater than or equal to 0.01"]),
    ({"publish": {"endpoints": ["http://x"]}}, ["publish.endpoints", "http://x", "tcp://"]),
    ({"sources": []}, ["sources", "at least 1"]),
    (
        {"sources": [{"spec": "mic", "id": "a.b"}]},
        ["sources[0].id", "a.b", "letters, digits, _ and -"],
    ),
    ({"sources": [{"id": "x"}]}, ["sources[0].spec", "required"]),
    ({"sources": [{"spec": "speaker"}]}, ["sources[0].spec", "unknown source 'speaker'"]),
    ({"sources": [{"spec": "pcm:-?rate=fast"}]}, ["sources[0].spec", "rate='fast'", "integer"]),
    ({"sources": [{"spec": "pcm:-?format=mp3"}]}, ["unknown PCM format 'mp3'", "s16le"]),
    ({"sources": [{"spec": "mic:0?rate=5"}]}, ["rate=5", "out of range (8000 to 384000)"]),
    ({"sources": [{"spec": "file:"}]}, ["sources[0].spec", "needs a path"]),
    ({"publish": {"smoothing": {"method": "mean"}}}, ["publish.smoothing.method", "'ema'"]),
    ({"publish": {"smoothing": {"width": 0}}}, ["publish.smoothing.width", "greater than 0"]),
    ({"publish": {"mel": "always"}}, ["publish.mel", "'auto'"]),
    ({"pipeline": {"pace": "slow"}}, ["pipeline.pace", "slow", "realtime", "fast"]),
    (["not", "a", "mapping"], ["top level must be a mapping"]),
    # dashboard
    ({"dashboard": {"port": 70000}}, ["dashboard.port", "less than or equal to 65535"]),
    ({"dashboard": {"host": ""}}, ["dashboard.host", "at least 1 character"]),
    (
        {"dashboard": {"enabled": True, "host": "0.0.0.0"}},
        ["dashboard", "reachable from other machines", "--token", "127.0.0.1"],
    ),
    ({"dashboard": {"token": "short"}}, ["dashboard.token", "at least 8 characters"]),
    ({"dashboard": {"colour": "red"}}, ["dashboard.colour", "unknown key"]),
    # mqtt
    ({"mqtt": {"broker": "http://ha"}}, ["mqtt.broker", "must start with mqtt://"]),
    ({"mqtt": {"broker": "mqtt://"}}, ["mqtt.broker", "has no host"]),
    ({"mqtt": {"prefix": "a/+/b"}}, ["mqtt.prefix", "without +, #"]),
    ({"mqtt": {"node": "my house"}}, ["mqtt.node", "letters, digits, _ and -"]),
    ({"mqtt": {"queue_size": 0}}, ["mqtt.queue_size", "greater than or equal to 1"]),
    (
        {"mqtt": {"broker": "mqtt://ha", "tls": {"insecure": True}}},
        ["mqtt", "tls options need an mqtts:// broker URL"],
    ),
    ({"mqtt": {"tls": {"ca_certs": "/no/such/ca.pem"}}}, ["mqtt.tls", "no such file"]),
    # security
    ({"security": {"curve_allow": "/tmp"}}, ["security", "curve_secret and curve_allow go"]),
    (
        {"security": {"curve_secret": "/no/server.key_secret", "curve_allow": "/tmp"}},
        ["security", "no such file", "soundwatch keys generate"],
    ),
    ({"security": {"curve_secret": __file__, "curve_allow": "/no/dir"}}, ["no such directory"]),
    ({"security": {"curve_secrte": "x"}}, ["security.curve_secrte", "unknown key"]),
    # metrics
    ({"metrics": {"port": -1}}, ["metrics.port", "greater than or equal to 0"]),
    ({"metrics": {"enabled": "sometimes"}}, ["metrics.enabled", "sometimes", "boolean"]),
    ({"metrics": {"path": "/m"}}, ["metrics.path", "unknown key"]),
    # publish.smoothing and publish.mel (beyond the two above)
    ({"publish": {"smoothing": {"width": 601}}}, ["publish.smoothing.width", "600"]),
    ({"publish": {"smoothing": {"method": "ema", "span": 1}}}, ["publish.smoothing.span"]),
    ({"publish": {"mel": True}}, ["publish.mel", "'auto'"]),
    # inference (the engine), serve and edge, activity gating
    ({"inference": {"engine": "spark"}}, ["inference.engine", "'local' or 'ray'", "spark"]),
    ({"inference": {"replicas": 0}}, ["inference.replicas", "at least 1"]),
    ({"inference": {"replicas": {"min": 3, "max": 1}}}, ["inference.replicas", "min <= max"]),
    ({"inference": {"ray_address": "nowhere"}}, ["inference.ray_address", "HOST:PORT"]),
    ({"inference": {"num_gpus": -1}}, ["inference.num_gpus", "greater than or equal to 0"]),
    ({"serve": {"listen": "http://x"}}, ["serve.listen", "http://x", "tcp://HOST:PORT"]),
    ({"serve": {"silent_after": 0}}, ["serve.silent_after", "greater than or equal to 0.5"]),
    ({"edge": {"encoding": "int8"}}, ["edge.encoding", "'float16' or 'float32'", "int8"]),
    ({"edge": {"to": "udp://x"}}, ["edge.to", "udp://x", "tcp://HOST:PORT"]),
    ({"edge": {"to": "tcp://*:5557"}}, ["edge.to", "host * only works when listening"]),
    ({"control": {"endpoint": "5558"}}, ["control.endpoint", "no transport", "tcp://HOST:PORT"]),
    ({"publish": {"endpoints": ["tcp://h:99999"]}}, ["publish.endpoints", "'99999' is not a"]),
    ({"edge": {"id": "a.b"}}, ["edge.id", "letters, digits, _ and -"]),
    ({"edge": {"buffer_seconds": 0}}, ["edge.buffer_seconds", "greater than or equal to 1"]),
    ({"pipeline": {"gate": {"level_db": -1}}}, ["pipeline.gate.level_db", "greater than 0"]),
    ({"pipeline": {"gate": {"thresh": 1}}}, ["pipeline.gate.thresh", "unknown key"]),
    ({"model": {"parallel": 0}}, ["model.parallel", "'auto'", "from 1 to 256", "got 0"]),
    ({"model": {"parallel": "all"}}, ["model.parallel", "'auto'", "usable CPU cores", "'all'"]),
]


@pytest.mark.parametrize(("data", "expected"), BAD_CONFIGS)
def test_bad_config_names_key_value_and_allowed(data: object, expected: list[str]) -> None:
    with pytest.raises(SoundwatchError) as caught:
        parse_config(data, origin="test.yaml")
    message = str(caught.value)
    assert "test.yaml" in message
    for part in expected:
        assert part in message, f"{part!r} missing from: {message}"


def test_flags_of_the_new_sections_are_checked_like_the_file() -> None:
    from soundwatch.dashboard.config import parse_listen_address

    with pytest.raises(SoundwatchError, match=r"bad metrics address 'x:port'.*\[HOST:\]PORT"):
        parse_listen_address("x:port", what="metrics")
    with pytest.raises(SoundwatchError, match=r"(?s)command-line flags.*security"):
        apply_overrides(Config(), {"security.curve_secret": "/no/such.key_secret"})
    config = apply_overrides(Config(), {"metrics.enabled": True, "metrics.port": 0})
    assert config.metrics.enabled and config.metrics.port == 0


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  name: mn04\n   threads: [1\n")
    with pytest.raises(SoundwatchError, match=r"not valid YAML at line \d+"):
        load_config(path)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SoundwatchError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_replace_and_revalidate() -> None:
    config = apply_overrides(Config(), {"model.name": "mn10", "windows.hop": None})
    assert config.model.name == "mn10"
    assert config.windows.hop == Config().windows.hop
    with pytest.raises(SoundwatchError, match=r"(?s)command-line.*windows.window"):
        apply_overrides(Config(), {"windows.window": -1.0})


def test_windows_must_be_whole_frames() -> None:
    with pytest.raises(SoundwatchError, match=r"window \(0.325 s\) must be a multiple of 0.01"):
        parse_config({"windows": {"window": 0.325}})


def test_model_names_are_the_catalog_and_need_no_torch() -> None:
    """One list of models: the config accepts exactly the catalog's names, and reading a
    config does not load torch (subscribers and ``config check`` stay light)."""
    import subprocess
    import sys

    from soundwatch.model_catalog import MODEL_NAMES, MODEL_SPECS

    for name in MODEL_NAMES:
        assert parse_config({"model": {"name": name}}).model.name == name
    assert MODEL_SPECS["mn04"].release_file == "mn04_as_mAP_432.pt"
    import soundwatch.config

    assert soundwatch.config.MODEL_NAMES is MODEL_NAMES
    check = "import sys, soundwatch.config; assert 'torch' not in sys.modules, 'torch loaded'"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
