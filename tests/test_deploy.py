"""deploy/: the systemd units verify, every soundwatch command line in them, the Dockerfile
and the compose file parses with the real CLI, and the Dockerfile's install and commands run
in a clean virtual environment (offline: the dependencies come from this one)."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import click
import pytest
import yaml
from conftest import require_executable

from soundwatch.cli import main

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
UNITS = sorted((DEPLOY / "systemd").iterdir())
INSTALLED = "/opt/soundwatch/bin/soundwatch"


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # keys are case-sensitive
    parser.read(path)
    return parser


def test_systemd_units_verify(tmp_path: Path) -> None:
    analyze = require_executable("systemd-analyze")
    soundwatch = Path(sys.executable).with_name("soundwatch")
    for path in UNITS:  # the installed path, pointed at this checkout's entry point
        text = path.read_text().replace(INSTALLED, str(soundwatch))
        (tmp_path / path.name).write_text(text)
    result = subprocess.run(
        [analyze, "verify", "--man=no", *(p.name for p in UNITS)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert not re.search(r"Unknown|ignoring|not executable|Failed|Invalid", output), output


def test_units_restart_and_check_health() -> None:
    service = unit(DEPLOY / "systemd" / "soundwatch.service")
    assert service["Service"]["Restart"] == "on-failure"
    assert "health --wait" in service["Service"]["ExecStartPost"]
    assert service["Service"]["KillSignal"] == "SIGTERM"  # the clean stop
    assert int(service["Unit"]["StartLimitBurst"]) > 1
    check = unit(DEPLOY / "systemd" / "soundwatch-health.service")
    assert check["Service"]["ExecStart"].startswith(f"{INSTALLED} health")
    assert "systemctl --no-block restart soundwatch.service" in check["Service"]["ExecStopPost"]
    timer = unit(DEPLOY / "systemd" / "soundwatch-health.timer")
    assert timer["Timer"]["OnUnitActiveSec"] and timer["Install"]["WantedBy"] == "timers.target"


def command_lines() -> list[tuple[str, list[str]]]:
    """Every soundwatch command line in deploy/, as argument lists after ``soundwatch``."""
    found = []
    for path in UNITS:
        for section in unit(path).values():
            for key in ("ExecStart", "ExecStartPost"):
                if INSTALLED in section.get(key, ""):
                    argv = shlex.split(section[key])
                    found.append((f"{path.name} {key}", argv[1:]))
    dockerfile = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    entry = json.loads(re.search(r"^ENTRYPOINT (.+)$", dockerfile, re.M).group(1))
    assert entry == ["soundwatch"]
    found.append(("Dockerfile CMD", json.loads(re.search(r"^CMD (.+)$", dockerfile, re.M)[1])))
    health = re.search(r"^HEALTHCHECK .* CMD (\[.+\])$", dockerfile, re.M)
    assert health is not None, "the Dockerfile has no HEALTHCHECK"
    found.append(("Dockerfile HEALTHCHECK", json.loads(health[1])[1:]))
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    found.append(("compose soundwatch", compose["services"]["soundwatch"]["command"]))
    return found


@pytest.mark.parametrize(("where", "argv"), command_lines(), ids=lambda x: str(x)[:40])
def test_every_command_line_parses(where: str, argv: list[str]) -> None:
    command = main.commands[argv[0]]
    try:
        command.make_context(argv[0], list(argv[1:]))
    except click.UsageError as error:
        pytest.fail(f"{where}: {shlex.join(argv)}: {error}")


def test_compose_runs_soundwatch_with_mosquitto() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto")
    assert (DEPLOY / services["mosquitto"]["volumes"][0].split(":")[0]).is_file()
    soundwatch = services["soundwatch"]
    assert soundwatch["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert "mqtt://mosquitto:1883" in soundwatch["command"]
    assert soundwatch["depends_on"]["mosquitto"]["condition"] == "service_healthy"


def test_the_dockerfile_installs_and_runs_in_a_clean_venv(tmp_path: Path) -> None:
    """What the Dockerfile does, step by step, without Docker: copy what it copies, install
    it as it installs it into a fresh venv (offline: dependencies from this environment),
    then run its command lines."""
    dockerfile = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    context = tmp_path / "context"
    context.mkdir()
    for line in re.findall(r"^COPY (.+)$", dockerfile, re.M):
        *sources, target = line.split()
        for name in sources:
            source = REPO / name
            dest = context / (name if target == "./" else target)
            if source.is_dir():
                shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(source, dest)
    install = re.search(
        r"^RUN python -m pip install (.+?) && install -D -m 644 (\S+) (\S+)$", dockerfile, re.M
    )
    assert install is not None, "the Dockerfile's install step changed: update this test"
    pip_args = shlex.split(install[1])
    assert pip_args[-1] == "." and "--extra-index-url" in pip_args

    venv = tmp_path / "venv"
    # No pip or setuptools of its own (the venv module's are older than pyproject needs):
    # this environment's pip installs into it, its build backend comes through the .pth.
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    site = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    (site / "soundwatch-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    offline = ["--no-index", "--no-deps", "--no-build-isolation", "--no-cache-dir"]
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    result = subprocess.run(
        [*pip, "install", *offline, "."],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    soundwatch = venv / "bin" / "soundwatch"
    location = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import soundwatch; print(soundwatch.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    ).stdout
    assert location.startswith(str(venv)), f"not the installed copy: {location}"
    config = context / install[2]
    checks = [
        ["config", "check", str(config)],  # what CMD runs with, installed as /etc/...
        ["health", "--help"],
        ["run", "--help"],
        ["health", "--endpoint", "tcp://127.0.0.1:9", "--timeout", "0.5"],  # HEALTHCHECK
    ]
    for args in checks:
        ran = subprocess.run(
            [str(soundwatch), *args], capture_output=True, text=True, cwd=tmp_path, timeout=120
        )
        expected = 1 if args[0] == "health" and "--help" not in args else 0
        assert ran.returncode == expected, f"soundwatch {shlex.join(args)}: {ran.stderr}"
    assert "no status heartbeat" in ran.stderr  # an unhealthy verdict, not a crash
