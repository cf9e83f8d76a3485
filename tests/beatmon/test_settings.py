"""Settings: defaults, the shipped files, environment, precedence and every error."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from beatmon.errors import ConfigError
from beatmon.settings import (
    AlarmConfig,
    KafkaSettings,
    MonitorSettings,
    MqttConfig,
    ProducerSettings,
    Secret,
    TrainerSettings,
    known_keys,
    load_monitor_settings,
    load_replay_settings,
    load_trainer_settings,
)

CONFIG = Path(__file__).resolve().parents[2] / "config"
LOCAL_FILE = CONFIG / "beatmon.yaml"
COMPOSE_FILE = CONFIG / "beatmon.compose.yaml"
SECTIONS = [
    "kafka",
    "topics",
    "mqtt",
    "metrics",
    "alarms",
    "monitor",
    "replay",
    "train",
]
PASSWORD = "hunter2-not-for-logs"

Write = Callable[..., Path]


def make_bundle(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("{}")
    return folder


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with a bundle at the default runs/dense."""
    monkeypatch.chdir(tmp_path)
    make_bundle(tmp_path / "runs" / "dense")
    return tmp_path


@pytest.fixture
def write(workdir: Path) -> Write:
    """Writes a settings file in the working directory and gives its path."""

    def write(text: str, name: str = "settings.yaml") -> Path:
        path = workdir / name
        path.write_text(text)
        return path

    return write


def error_of(path: Path | None, env: dict[str, str], **overrides: object) -> str:
    with pytest.raises(ConfigError) as caught:
        load_monitor_settings(path, env, overrides or None)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- defaults and the shipped files ----------------------------------------


def test_without_file_or_environment_the_defaults_apply(workdir: Path) -> None:
    assert load_monitor_settings(env={}) == MonitorSettings()
    assert load_replay_settings(env={}) == ProducerSettings()
    assert load_trainer_settings(env={}) == TrainerSettings()
    settings = MonitorSettings()
    assert settings.metrics.host == "127.0.0.1"
    assert settings.kafka.client_options() == {"security_protocol": "PLAINTEXT"}


def test_config_beatmon_yaml_below_the_working_directory_is_read(
    workdir: Path,
) -> None:
    (workdir / "config").mkdir()
    (workdir / "config" / "beatmon.yaml").write_text("monitor:\n  max_batch: 64\n")
    assert load_monitor_settings(env={}).max_batch == 64


def test_the_local_file_holds_exactly_the_builtin_defaults(workdir: Path) -> None:
    assert load_monitor_settings(LOCAL_FILE, {}) == MonitorSettings()
    assert load_replay_settings(LOCAL_FILE, {}) == ProducerSettings()
    assert load_trainer_settings(LOCAL_FILE, {}) == TrainerSettings()


@pytest.mark.parametrize("path", [LOCAL_FILE, COMPOSE_FILE], ids=lambda p: p.name)
def test_the_shipped_files_document_every_key(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    assert list(data) == SECTIONS
    for section in SECTIONS:
        assert list(data[section]) == known_keys(section), section
    assert data["kafka"]["sasl_password"] is None
    assert data["mqtt"]["password"] is None


def test_the_compose_file_points_at_the_compose_services(workdir: Path) -> None:
    bundle = make_bundle(workdir / "models" / "dense")
    monitor = load_monitor_settings(COMPOSE_FILE, {}, {"monitor.bundle": str(bundle)})
    assert monitor.kafka.bootstrap_servers == "kafka:9092"
    assert monitor.mqtt.host == "mosquitto"
    assert monitor.metrics.host == "0.0.0.0"
    assert monitor.metrics.port == 9108
    assert monitor.bundle == bundle

    replay = load_replay_settings(COMPOSE_FILE, {})
    assert (replay.kafka.bootstrap_servers, replay.patients, replay.loop) == (
        "kafka:9092",
        300,
        True,
    )
    assert load_trainer_settings(COMPOSE_FILE, {}).out == Path("/models/dense")

    # Outside a container /models/dense is missing, and the error says where
    # the path came from.
    message = error_of(COMPOSE_FILE, {})
    assert message.startswith(f"{COMPOSE_FILE}:")
    assert "monitor.bundle: no model bundle at /models/dense" in message


def test_other_processes_sections_are_ignored_but_their_keys_checked(
    write: Write,
) -> None:
    path = write("train:\n  epochs: -1\nreplay:\n  speed: fast\n")
    assert load_monitor_settings(path, {}) == MonitorSettings()
    path = write("train:\n  epochz: 3\n")
    assert "train.epochz: unknown key; did you mean epochs?" in error_of(path, {})


def test_empty_file_and_empty_sections_mean_defaults(write: Write) -> None:
    assert load_monitor_settings(write(""), {}) == MonitorSettings()
    assert load_monitor_settings(write("kafka:\nmqtt:\n"), {}) == MonitorSettings()


# --- environment and precedence --------------------------------------------


def test_environment_values_are_parsed_by_type(workdir: Path) -> None:
    env = {
        "BEATMON_KAFKA__BOOTSTRAP_SERVERS": "b1:9092,b2:9092",
        "BEATMON_MONITOR__MAX_BATCH": " 256 ",
        "BEATMON_MONITOR__REPORT_EVERY_S": "2.5",
        "BEATMON_MQTT__ENABLED": "no",
        "BEATMON_MQTT__TLS": "TRUE",
        "BEATMON_TOPICS__SCORES": "beatmon.scores",
        "BEATMON_METRICS__PORT": "9200",
        "BEATMON_ALARMS__COOLDOWN_S": "5",
        "BEATMON_TEST_KAFKA_PORT": "not a setting",
        "BEATMON_UNRELATED": "left alone",
        "PATH": "/usr/bin",
    }
    settings = load_monitor_settings(env=env)
    assert settings.kafka.bootstrap_servers == "b1:9092,b2:9092"
    assert settings.max_batch == 256
    assert settings.report_every_s == 2.5
    assert (settings.mqtt.enabled, settings.mqtt.tls) == (False, True)
    assert settings.topics.scores == "beatmon.scores"
    assert settings.metrics.port == 9200
    assert settings.alarms.cooldown_s == 5.0


def test_an_empty_environment_value_unsets_an_optional_key(write: Write) -> None:
    path = write("replay:\n  limit: 10\n  duration_s: 3\n  normal_label: '1'\n")
    env = {"BEATMON_REPLAY__LIMIT": "", "BEATMON_REPLAY__NORMAL_LABEL": ""}
    replay = load_replay_settings(path, env)
    assert (replay.limit, replay.duration_s, replay.normal_label) == (None, 3.0, None)


def test_later_sources_win(write: Write) -> None:
    path = write("monitor:\n  max_batch: 100\n  max_wait_ms: 7\n")
    env = {"BEATMON_MONITOR__MAX_BATCH": "200"}
    assert load_monitor_settings(path, {}).max_batch == 100
    assert load_monitor_settings(path, env).max_batch == 200
    both = load_monitor_settings(path, env, {"monitor.max_batch": 300})
    assert (both.max_batch, both.max_wait_ms) == (300, 7)
    # None is a flag the user did not give.
    assert (
        load_monitor_settings(path, env, {"monitor.max_batch": None}).max_batch == 200
    )
    # Flags may also arrive as text.
    assert load_monitor_settings(path, env, {"monitor.max_batch": "64"}).max_batch == 64


def test_beatmon_config_names_the_file_and_a_path_argument_beats_it(
    write: Write,
) -> None:
    named = write("monitor:\n  max_batch: 11\n", "named.yaml")
    given = write("monitor:\n  max_batch: 22\n", "given.yaml")
    env = {"BEATMON_CONFIG": str(named)}
    assert load_monitor_settings(env=env).max_batch == 11
    assert load_monitor_settings(given, env).max_batch == 22
    message = error_of(None, {"BEATMON_CONFIG": "nowhere.yaml"})
    assert message == "BEATMON_CONFIG: no such settings file: nowhere.yaml"
    assert error_of(Path("absent.yaml"), {}) == "absent.yaml: no such settings file"


def test_settings_are_immutable(workdir: Path) -> None:
    settings = load_monitor_settings(env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.max_batch = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.kafka.bootstrap_servers = "elsewhere:9092"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        Secret("x")._value = "y"


# --- errors name the key and the source -------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "monitor:\n  max_btach: 5\n",
            ":2: monitor.max_btach: unknown key; did you mean max_batch? "
            "(known: bundle, group_id, max_batch, max_wait_ms, session_timeout_ms, "
            "report_every_s, reload_interval_s)",
        ),
        ("monitr:\n  max_batch: 5\n", ":1: unknown section 'monitr' (known: kafka,"),
        (
            "monitor:\n  max_batch: -5\n",
            ":2: monitor.max_batch: must be at least 1, got -5",
        ),
        (
            "monitor:\n  reload_interval_s: -1\n",
            ":2: monitor.reload_interval_s: must be at least 0, got -1",
        ),
        (
            "monitor:\n  max_batch: lots\n",
            ":2: monitor.max_batch: expected an integer, got 'lots'",
        ),
        (
            "monitor:\n  max_batch: true\n",
            ":2: monitor.max_batch: expected an integer, got True",
        ),
        (
            "monitor:\n  max_wait_ms: 99999\n",
            ":2: monitor.max_wait_ms: must be at most 60000",
        ),
        ("mqtt:\n  port: 0\n", ":2: mqtt.port: must be a port number 1-65535, got 0"),
        (
            "mqtt:\n  host: 10\n",
            ":2: mqtt.host: expected a string, got 10; put it in quotes",
        ),
        (
            "kafka:\n  security_protocol: TLS\n",
            ":2: kafka.security_protocol: must be one of PLAINTEXT, SSL, "
            "SASL_PLAINTEXT, SASL_SSL; got 'TLS'",
        ),
        (
            "kafka:\n  security_protocol: SASL_SSL\n",
            ":2: kafka.sasl_mechanism: required when kafka.security_protocol is "
            "SASL_SSL",
        ),
        (
            "kafka:\n  ssl_cafile: ca.pem\n",
            ":2: kafka.ssl_cafile: is set but kafka.security_protocol is PLAINTEXT",
        ),
        (
            "kafka:\n  security_protocol: SSL\n  ssl_cafile: missing-ca.pem\n",
            ":3: kafka.ssl_cafile: no such file: missing-ca.pem",
        ),
        (
            "mqtt:\n  ca_file: ca.pem\n",
            ":2: mqtt.ca_file: is set but mqtt.tls is false",
        ),
        (
            "topics:\n  beats: 'has space'\n",
            ":2: topics.beats: must be 1 to 249 letters",
        ),
        (
            "topics:\n  alerts: beatmon.beats\n",
            ":2: topics.alerts: must differ from topics.beats",
        ),
        (
            "alarms:\n  window_beats: 0\n",
            ":2: alarms.window_beats: must be from 1 to 1000, got 0",
        ),
        (
            "alarms:\n  window_beats: 3\n",
            ":2: alarms.low_k: must be from 1 to window_beats (3), got 4",
        ),
        (
            "alarms:\n  low_k: 7\n",
            ":2: alarms.medium_k: must be from low_k (7) to window_beats (10), got 6",
        ),
        (
            "alarms:\n  clear_k: 4\n",
            ":2: alarms.clear_k: must be from 0 to low_k - 1 (3), got 4",
        ),
        (
            "monitor:\n  report_every_s: .inf\n",
            ":2: monitor.report_every_s: must be a finite",
        ),
        (
            "monitor:\n  bundle: elsewhere\n",
            ":2: monitor.bundle: no model bundle at elsewhere",
        ),
        (
            "monitor:\n  max_batch: 1\n  max_batch: 2\n",
            ":3: monitor.max_batch: appears twice",
        ),
        ("- kafka\n", ": expected sections such as 'kafka:'"),
        ("kafka: 5\n", ":1: kafka: expected 'key: value' lines, got int"),
    ],
)
def test_file_errors_name_the_file_line_and_key(
    write: Write,
    text: str,
    expected: str,
) -> None:
    path = write(text)
    message = error_of(path, {})
    assert message.startswith(f"{path}{expected}"), message


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"BEATMON_MONITOR__MAX_BTACH": "5"},
            "BEATMON_MONITOR__MAX_BTACH: monitor.max_btach: unknown key; did you mean "
            "max_batch?",
        ),
        (
            {"BEATMON_MONITR__MAX_BATCH": "5"},
            "BEATMON_MONITR__MAX_BATCH: unknown section",
        ),
        (
            {"BEATMON_KAFKA_BOOTSTRAP_SERVERS": "b:9092"},
            "BEATMON_KAFKA_BOOTSTRAP_SERVERS: not a settings variable; did you mean "
            "BEATMON_KAFKA__BOOTSTRAP_SERVERS?",
        ),
        (
            {"BEATMON_MONITOR__MAX_BATCH": "abc"},
            "BEATMON_MONITOR__MAX_BATCH: monitor.max_batch: expected an integer, "
            "got 'abc'",
        ),
        (
            {"BEATMON_MQTT__PORT": "70000"},
            "BEATMON_MQTT__PORT: mqtt.port: must be a port number 1-65535, got 70000",
        ),
        (
            {"BEATMON_MQTT__TLS": "maybe"},
            "BEATMON_MQTT__TLS: mqtt.tls: expected true or false, got 'maybe'",
        ),
        (
            {"BEATMON_KAFKA__SASL_MECHANISM": "PLAIN"},
            "BEATMON_KAFKA__SASL_MECHANISM: kafka.sasl_mechanism: is set but "
            "kafka.security_protocol is PLAINTEXT",
        ),
        (
            {"BEATMON_MONITOR__GROUP_ID": ""},
            "BEATMON_MONITOR__GROUP_ID: monitor.group_id: must not be empty",
        ),
        (
            {"BEATMON_MONITOR__BUNDLE": ""},
            "BEATMON_MONITOR__BUNDLE: monitor.bundle: expected a path, got ''",
        ),
        (
            # Missing the password: the error points at the protocol's source.
            {
                "BEATMON_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "BEATMON_KAFKA__SASL_MECHANISM": "PLAIN",
                "BEATMON_KAFKA__SASL_USERNAME": "beatmon",
            },
            "BEATMON_KAFKA__SECURITY_PROTOCOL: kafka.sasl_password: required when "
            "kafka.security_protocol is SASL_PLAINTEXT",
        ),
    ],
)
def test_environment_errors_name_the_variable_and_key(
    workdir: Path, env: dict[str, str], expected: str
) -> None:
    assert error_of(None, env).startswith(expected)


def test_a_rule_across_keys_names_the_source_that_broke_it(workdir: Path) -> None:
    # The local file sets sasl_mechanism to null; the variable made it needed.
    env = {"BEATMON_KAFKA__SECURITY_PROTOCOL": "SASL_SSL"}
    assert error_of(LOCAL_FILE, env) == (
        "BEATMON_KAFKA__SECURITY_PROTOCOL: kafka.sasl_mechanism: required when "
        "kafka.security_protocol is SASL_SSL"
    )


def test_the_default_bundle_missing_stops_the_monitor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert error_of(None, {}) == (
        "built-in default: monitor.bundle: no model bundle at runs/dense "
        "(not a folder); train one with `beatmon train --out runs/dense`"
    )
    (tmp_path / "runs" / "dense").mkdir(parents=True)
    assert "(no manifest.json)" in error_of(None, {})


def test_command_line_errors(workdir: Path) -> None:
    message = error_of(None, {}, **{"monitor.max_wait_ms": -1})
    assert message == "command line: monitor.max_wait_ms: must be at least 0, got -1"
    message = error_of(None, {}, **{"replay.speed": 2.0})
    assert message.startswith("command line: replay.speed: not a monitor setting")
    message = error_of(None, {}, **{"monitor.speed": 2.0})
    assert message.startswith("command line: monitor.speed: unknown key")


def test_the_trainer_checks_its_own_section(write: Write) -> None:
    path = write("train:\n  batch_size: -5\n")
    with pytest.raises(ConfigError, match=r"\.yaml:2: train\.batch_size: must be at "):
        load_trainer_settings(path, {})
    for env, key in [
        (
            {"BEATMON_TRAIN__MODEL": "huge"},
            "train.model: must be one of conv, denoising, dense, kl-sparse, sparse",
        ),
        ({"BEATMON_TRAIN__THRESHOLD": "top:3"}, "train.threshold: unknown threshold"),
        ({"BEATMON_TRAIN__LAYOUT": "xml"}, "train.layout: must be one of auto, ucr"),
    ]:
        with pytest.raises(ConfigError, match=f"^{next(iter(env))}: {key}"):
            load_trainer_settings(None, env)


def test_replay_checks_its_own_section(workdir: Path) -> None:
    for env, key in [
        ({"BEATMON_REPLAY__PATIENTS": "0"}, "replay.patients: must be at least 1"),
        ({"BEATMON_REPLAY__SPEED": "-1"}, "replay.speed: must be above 0"),
        ({"BEATMON_REPLAY__SPEED": "inf"}, "replay.speed: must be a finite number"),
        ({"BEATMON_REPLAY__PATIENT_PREFIX": "a/b"}, "replay.patient_prefix: must be"),
    ]:
        with pytest.raises(ConfigError, match=f"^{next(iter(env))}: {key}"):
            load_replay_settings(None, env)


def test_yaml_syntax_errors_name_file_and_line_without_the_text(
    write: Write,
) -> None:
    path = write(f'monitor:\n  max_batch: 5\nmqtt:\n  password: "{PASSWORD}\n')
    message = error_of(path, {})
    assert message.startswith(
        f"{path}:5: not valid YAML: found unexpected end of stream"
    )
    assert PASSWORD not in message

    path = write("monitor:\n  max_batch: [1, 2\n")
    assert error_of(path, {}).startswith(f"{path}:3: not valid YAML")


# --- secrets and Kafka options ---------------------------------------------


def secure_env() -> dict[str, str]:
    return {
        "BEATMON_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "BEATMON_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
        "BEATMON_KAFKA__SASL_USERNAME": "beatmon",
        "BEATMON_KAFKA__SASL_PASSWORD": PASSWORD,
        "BEATMON_MQTT__USERNAME": "monitor",
        "BEATMON_MQTT__PASSWORD": PASSWORD,
    }


def test_secrets_stay_out_of_repr_str_and_logs(workdir: Path) -> None:
    settings = load_monitor_settings(env=secure_env())
    assert settings.mqtt.password == Secret(PASSWORD)
    assert repr(Secret(PASSWORD)) == "'***'"
    assert str(Secret(PASSWORD)) == f"{Secret(PASSWORD)}" == "***"
    shown = [
        repr(settings),
        str(settings),
        str(settings.redacted()),
        settings.describe(),
        repr(dataclasses.asdict(settings)),
        repr(copy.deepcopy(settings)),
    ]
    for text in shown:
        assert PASSWORD not in text
    assert settings.redacted()["kafka"]["sasl_password"] == "***"
    assert settings.redacted()["mqtt"]["password"] == "***"
    assert settings.redacted()["bundle"] == "runs/dense"
    assert "mqtt.password=*** " in settings.describe()
    assert pickle.loads(pickle.dumps(settings)) == settings


def test_a_secret_of_the_wrong_type_is_not_echoed(write: Write) -> None:
    path = write("mqtt:\n  username: u\n  password: 31415926\n")
    message = error_of(path, {})
    assert message == (
        f"{path}:3: mqtt.password: expected a string, got a value of type int "
        "(not shown)"
    )


def test_kafka_client_options_for_sasl_ssl_with_scram(write: Write) -> None:
    (ca := Path("ca.pem")).write_text("not checked here")
    path = write("kafka:\n  ssl_cafile: ca.pem\n  ssl_check_hostname: false\n")
    kafka = load_monitor_settings(path, secure_env()).kafka
    assert kafka.client_options() == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "beatmon",
        "sasl_plain_password": PASSWORD,
        "ssl_check_hostname": False,
        "ssl_cafile": str(ca),
    }
    assert PASSWORD not in repr(kafka)


def test_mqtt_and_kafka_rules_hold_for_direct_construction() -> None:
    with pytest.raises(ConfigError, match=r"mqtt\.username: required when"):
        MqttConfig(password=Secret("x"))
    with pytest.raises(ConfigError, match=r"kafka\.ssl_keyfile: is set but"):
        KafkaSettings(security_protocol="SSL", ssl_keyfile="key.pem")


def test_alarm_numbers_feed_the_alarm_policy() -> None:
    from monitor.alarms import AlarmSettings

    assert AlarmSettings.from_mapping(AlarmConfig().as_mapping()) == AlarmSettings()
