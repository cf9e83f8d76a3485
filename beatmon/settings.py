"""One validated, immutable settings object per process, built once at start-up.

Each process (monitor, replay producer, trainer) reads the sections it uses
from a YAML file, then ``BEATMON_<SECTION>__<KEY>`` environment variables,
then the command-line flags the user actually gave; a later source wins::

    built-in defaults < YAML file < environment < command line

The file is the ``path`` argument, else the one ``BEATMON_CONFIG`` names, else
``config/beatmon.yaml`` below the working directory if it exists. Its top-level
sections are ``kafka``, ``topics``, ``mqtt``, ``metrics``, ``alarms`` (shared)
and ``monitor``, ``replay``, ``train`` (one per process). A process ignores
the values of the other processes' sections, but an unknown section or key
anywhere is an error.

Environment values are text, read by the type of their key: integers, numbers,
``true``/``false`` (also ``1``/``0``, ``yes``/``no``, ``on``/``off``), paths;
an empty value unsets an optional key. ``BEATMON_CONFIG`` and ``BEATMON_TEST_*``
are not settings and are left alone.

Every problem is one :class:`~beatmon.errors.ConfigError` that starts with the
source and the key, for example
``config/beatmon.yaml:41: monitor.max_batch: must be at least 1, got -5`` or
``BEATMON_MQTT__PORT: mqtt.port: must be a port number 1-65535, got 70000``.
Passwords are :class:`Secret` values: they print as ``***`` and only
:meth:`Secret.reveal` gives them back.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import (
    Any,
    ClassVar,
    Literal,
    NoReturn,
    TypeVar,
    Union,
    cast,
    get_args,
    get_origin,
    get_type_hints,
)

import yaml

from beatmon.errors import BeatmonError, ConfigError
from monitor.alarms import AlarmSettingError, AlarmSettings

ENV_PREFIX = "BEATMON_"
CONFIG_ENV = "BEATMON_CONFIG"
# Variables under these prefixes belong to the test harness, not to settings.
IGNORED_ENV_PREFIXES = ("BEATMON_TEST_",)
DEFAULT_CONFIG_PATH = Path("config/beatmon.yaml")
DEFAULT_SOURCE = "built-in default"
CLI_SOURCE = "command line"
REDACTED = "***"

MAX_BATCH_LIMIT = 100_000
MAX_WAIT_MS_LIMIT = 60_000

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
Layout = Literal["auto", "ucr", "binary", "plain"]

_SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")
_TLS_PROTOCOLS = ("SSL", "SASL_SSL")
_KAFKA_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_PATIENT_PREFIX = re.compile(r"[A-Za-z0-9_-]{1,16}")
_TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
_FALSE_WORDS = frozenset({"false", "0", "no", "off"})


class Secret:
    """A string that prints as ``***``; :meth:`reveal` gives the value."""

    __slots__ = ("_value",)
    _value: str

    def __init__(self, value: str) -> None:
        object.__setattr__(self, "_value", value)

    def reveal(self) -> str:
        """The secret text itself; pass it to a client, never to a log."""
        return self._value

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("Secret is immutable")

    def __repr__(self) -> str:
        return f"'{REDACTED}'"

    def __str__(self) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        return (Secret, (self._value,))


class SettingError(ConfigError):
    """A rule on one or more keys is broken.

    ``keys`` are dotted keys, the one at fault first; the loader prefixes the
    message with the source of the first of them that was set anywhere.
    """

    def __init__(self, keys: str | tuple[str, ...], reason: str) -> None:
        self.keys = (keys,) if isinstance(keys, str) else keys
        self.reason = reason
        super().__init__(f"{self.keys[0]}: {reason}")


def _at_least(key: str, value: float, low: float) -> None:
    if value < low:
        raise SettingError(key, f"must be at least {low}, got {value}")


def _within(key: str, value: float, low: float, high: float) -> None:
    _at_least(key, value, low)
    if value > high:
        raise SettingError(key, f"must be at most {high}, got {value}")


def _above_zero(key: str, value: float) -> None:
    if not value > 0:
        raise SettingError(key, f"must be above 0, got {value}")


def _port(key: str, value: int) -> None:
    if not 1 <= value <= 65535:
        raise SettingError(key, f"must be a port number 1-65535, got {value}")


def _not_empty(key: str, value: str) -> None:
    if not value.strip():
        raise SettingError(key, "must not be empty")


def _is_file(path: Path) -> bool:
    """Whether ``path`` is a file; False too for a name the system refuses
    (too long, or holding a NUL character)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _is_dir(path: Path) -> bool:
    """Whether ``path`` is a folder; False too for a name the system refuses."""
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def _need_file(key: str, value: str | None) -> None:
    if value is not None and not _is_file(Path(value)):
        raise SettingError(key, f"no such file: {value}")


class _Section:
    """What every settings section and process settings object can do."""

    SECTION: ClassVar[str]

    def check_files(self) -> None:
        """Raise :class:`SettingError` when a file these settings name is missing."""

    def redacted(self) -> dict[str, Any]:
        """The settings as plain data, secrets replaced by ``***``; safe to log."""
        out: dict[str, Any] = {}
        for item in fields(cast(Any, self)):
            value = getattr(self, item.name)
            if isinstance(value, _Section):
                out[item.name] = value.redacted()
            elif isinstance(value, Secret):
                out[item.name] = REDACTED
            elif isinstance(value, Path):
                out[item.name] = str(value)
            else:
                out[item.name] = value
        return out

    def describe(self) -> str:
        """One ``section.key=value`` line of the keys that are set; safe to log."""
        parts: list[str] = []
        for item in fields(cast(Any, self)):
            value = getattr(self, item.name)
            if isinstance(value, _Section):
                parts.append(value.describe())
            elif value is not None:
                parts.append(f"{self.SECTION}.{item.name}={value}")
        return " ".join(parts)


@dataclass(frozen=True)
class KafkaSettings(_Section):
    """How to reach the Kafka brokers, and how to authenticate to them.

    SASL protocols need ``sasl_mechanism``, ``sasl_username`` and
    ``sasl_password``; the ``ssl_*`` files are PEM files and need a TLS
    protocol (``SSL`` or ``SASL_SSL``).
    """

    SECTION: ClassVar[str] = "kafka"

    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True

    def __post_init__(self) -> None:
        servers = [part.strip() for part in self.bootstrap_servers.split(",")]
        if not all(servers):
            raise SettingError(
                "kafka.bootstrap_servers",
                f"must be HOST:PORT[,HOST:PORT...], got {self.bootstrap_servers!r}",
            )
        protocol = self.security_protocol
        needs = ("kafka.security_protocol",)
        if protocol in _SASL_PROTOCOLS:
            for name in ("sasl_mechanism", "sasl_username", "sasl_password"):
                if getattr(self, name) is None:
                    raise SettingError(
                        (f"kafka.{name}", *needs),
                        f"required when {needs[0]} is {protocol}",
                    )
        else:
            for name in ("sasl_mechanism", "sasl_username", "sasl_password"):
                if getattr(self, name) is not None:
                    raise SettingError(
                        f"kafka.{name}",
                        f"is set but kafka.security_protocol is {protocol}; "
                        f"use {' or '.join(_SASL_PROTOCOLS)}",
                    )
        if protocol not in _TLS_PROTOCOLS:
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                if getattr(self, name) is not None:
                    raise SettingError(
                        f"kafka.{name}",
                        f"is set but kafka.security_protocol is {protocol}; "
                        f"use {' or '.join(_TLS_PROTOCOLS)}",
                    )
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise SettingError(
                "kafka.ssl_keyfile", "is set but kafka.ssl_certfile is not"
            )

    def check_files(self) -> None:
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            _need_file(f"kafka.{name}", getattr(self, name))

    def client_options(self) -> dict[str, Any]:
        """Security keyword arguments for kafka-python clients, only those set.

        ``bootstrap_servers`` is not among them; the password is revealed.
        """
        options: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.security_protocol in _SASL_PROTOCOLS:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            if self.sasl_password is not None:
                options["sasl_plain_password"] = self.sasl_password.reveal()
        if self.security_protocol in _TLS_PROTOCOLS:
            options["ssl_check_hostname"] = self.ssl_check_hostname
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                if getattr(self, name) is not None:
                    options[name] = getattr(self, name)
        return options


@dataclass(frozen=True)
class TopicSettings(_Section):
    """Kafka topic names; ``scores`` is optional (off when None)."""

    SECTION: ClassVar[str] = "topics"

    beats: str = "beatmon.beats"
    alerts: str = "beatmon.alerts"
    dead_letters: str = "beatmon.beats.dlq"
    alarms: str = "beatmon.alarms"
    alarm_state: str = "beatmon.alarm-state"
    scores: str | None = None

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for item in fields(self):
            name = getattr(self, item.name)
            if name is None:
                continue
            key = f"topics.{item.name}"
            if not _KAFKA_TOPIC.fullmatch(name) or name in (".", ".."):
                raise SettingError(
                    key,
                    "must be 1 to 249 letters, digits, '.', '_' or '-' "
                    f"(and not '.' or '..'), got {name!r}",
                )
            if name in seen:
                raise SettingError(
                    key, f"must differ from topics.{seen[name]}, both are {name!r}"
                )
            seen[name] = item.name


@dataclass(frozen=True)
class MqttConfig(_Section):
    """Where alarms go over MQTT, and how to log in.

    The file options are PEM files and need ``tls: true``.
    """

    SECTION: ClassVar[str] = "mqtt"

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: Secret | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    topic_prefix: str = "beatmon"
    buffer_size: int = 10_000

    def __post_init__(self) -> None:
        _not_empty("mqtt.host", self.host)
        _port("mqtt.port", self.port)
        if self.password is not None and self.username is None:
            raise SettingError(
                ("mqtt.username", "mqtt.password"), "required when mqtt.password is set"
            )
        if not self.tls:
            for name in ("ca_file", "cert_file", "key_file"):
                if getattr(self, name) is not None:
                    raise SettingError(
                        f"mqtt.{name}", "is set but mqtt.tls is false; set tls: true"
                    )
        if self.key_file is not None and self.cert_file is None:
            raise SettingError("mqtt.key_file", "is set but mqtt.cert_file is not")
        if not self.topic_prefix or any(c in self.topic_prefix for c in "+#\x00"):
            raise SettingError(
                "mqtt.topic_prefix",
                f"must be a non-empty topic without + or #, got {self.topic_prefix!r}",
            )
        _at_least("mqtt.buffer_size", self.buffer_size, 1)

    def check_files(self) -> None:
        for name in ("ca_file", "cert_file", "key_file"):
            _need_file(f"mqtt.{name}", getattr(self, name))


@dataclass(frozen=True)
class MetricsSettings(_Section):
    """The Prometheus endpoint; loopback unless a deployment opens it."""

    SECTION: ClassVar[str] = "metrics"

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9108

    def __post_init__(self) -> None:
        _not_empty("metrics.host", self.host)
        _port("metrics.port", self.port)


@dataclass(frozen=True)
class AlarmConfig(_Section):
    """The alarm policy's numbers, one key each.

    Counts are beats, times are seconds of beat time. The defaults and the
    rules are those of ``monitor.alarms.AlarmSettings``; an error here names
    where the number came from.
    """

    SECTION: ClassVar[str] = "alarms"

    window_beats: int = AlarmSettings.window_beats
    low_k: int = AlarmSettings.low_k
    medium_k: int = AlarmSettings.medium_k
    escalate_after_s: float = AlarmSettings.escalate_after_s
    cooldown_s: float = AlarmSettings.cooldown_s
    clear_after_beats: int = AlarmSettings.clear_after_beats
    clear_k: int = AlarmSettings.clear_k
    forget_after_s: float = AlarmSettings.forget_after_s

    def __post_init__(self) -> None:
        # The alarm policy owns its rules; here they only learn the key names.
        try:
            AlarmSettings.from_mapping(self.as_mapping())
        except AlarmSettingError as exc:
            keys = (exc.field, *exc.related)
            raise SettingError(
                tuple(f"alarms.{key}" for key in keys), f"{exc.reason}, got {exc.value}"
            ) from None

    def as_mapping(self) -> dict[str, int | float]:
        """The numbers by name, for the alarm policy's ``from_mapping``."""
        return {item.name: getattr(self, item.name) for item in fields(self)}


@dataclass(frozen=True)
class MonitorSettings(_Section):
    """Everything ``beatmon monitor`` needs; ``bundle`` must hold a model bundle."""

    SECTION: ClassVar[str] = "monitor"

    bundle: Path = Path("runs/dense")
    group_id: str = "beatmon-monitor"
    max_batch: int = 512
    max_wait_ms: int = 20
    session_timeout_ms: int = 10_000
    report_every_s: float = 10.0
    reload_interval_s: float = 2.0
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    topics: TopicSettings = field(default_factory=TopicSettings)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    alarms: AlarmConfig = field(default_factory=AlarmConfig)

    def __post_init__(self) -> None:
        _not_empty("monitor.group_id", self.group_id)
        _within("monitor.max_batch", self.max_batch, 1, MAX_BATCH_LIMIT)
        _within("monitor.max_wait_ms", self.max_wait_ms, 0, MAX_WAIT_MS_LIMIT)
        # Kafka's group.min.session.timeout.ms and max defaults bound this.
        _within("monitor.session_timeout_ms", self.session_timeout_ms, 6_000, 300_000)
        _above_zero("monitor.report_every_s", self.report_every_s)
        # 0 turns watching the bundle off.
        _within("monitor.reload_interval_s", self.reload_interval_s, 0, 3600)

    def check_files(self) -> None:
        if not _is_file(self.bundle / "manifest.json"):
            why = "not a folder" if not _is_dir(self.bundle) else "no manifest.json"
            raise SettingError(
                "monitor.bundle",
                f"no model bundle at {self.bundle} ({why}); train one with "
                f"`beatmon train --out {self.bundle}`",
            )


@dataclass(frozen=True)
class ProducerSettings(_Section):
    """Everything ``beatmon replay`` needs; its file section is ``replay``.

    ``speed`` multiplies time (2 is twice real time); ``max_rate`` ignores it
    and sends as fast as Kafka takes beats. ``truth: false`` sends no labels.
    """

    SECTION: ClassVar[str] = "replay"

    data: str = "ecg5000"
    layout: Layout = "auto"
    normal_label: str | None = None
    truth: bool = True
    patients: int = 100
    patient_prefix: str = "p"
    seed: int = 0
    speed: float = 1.0
    max_rate: bool = False
    loop: bool = False
    limit: int | None = None
    duration_s: float | None = None
    report_every_s: float = 5.0
    connect_timeout_s: float = 10.0
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    topics: TopicSettings = field(default_factory=TopicSettings)

    def __post_init__(self) -> None:
        _not_empty("replay.data", self.data)
        _at_least("replay.patients", self.patients, 1)
        if not _PATIENT_PREFIX.fullmatch(self.patient_prefix):
            raise SettingError(
                "replay.patient_prefix",
                "must be 1 to 16 letters, digits, '-' or '_', "
                f"got {self.patient_prefix!r}",
            )
        _at_least("replay.seed", self.seed, 0)
        _above_zero("replay.speed", self.speed)
        if self.limit is not None:
            _at_least("replay.limit", self.limit, 1)
        if self.duration_s is not None:
            _above_zero("replay.duration_s", self.duration_s)
        _above_zero("replay.report_every_s", self.report_every_s)
        _above_zero("replay.connect_timeout_s", self.connect_timeout_s)


@dataclass(frozen=True)
class TrainerSettings(_Section):
    """Everything ``beatmon train`` needs; its file section is ``train``.

    ``threshold`` is a policy such as ``false-alarm-rate:0.05``,
    ``percentile:99`` or ``mean-std:3``.
    """

    SECTION: ClassVar[str] = "train"

    data: str = "ecg5000"
    layout: Layout = "auto"
    normal_label: str | None = None
    model: str = "dense"
    out: Path = Path("runs/dense")
    epochs: int = 50
    batch_size: int = 32
    patience: int = 5
    seed: int = 0
    threshold: str = "false-alarm-rate:0.05"

    def __post_init__(self) -> None:
        from models.autoencoder import VARIANTS

        _not_empty("train.data", self.data)
        if self.model not in VARIANTS:
            raise SettingError(
                "train.model",
                f"must be one of {', '.join(sorted(VARIANTS))}, got {self.model!r}",
            )
        _at_least("train.epochs", self.epochs, 1)
        _at_least("train.batch_size", self.batch_size, 1)
        _at_least("train.patience", self.patience, 0)
        _at_least("train.seed", self.seed, 0)
        try:
            from models.threshold import ThresholdPolicy

            ThresholdPolicy.parse(self.threshold)
        except BeatmonError as exc:
            raise SettingError("train.threshold", str(exc)) from exc


_SHARED: dict[str, type[_Section]] = {
    cls.SECTION: cls
    for cls in (KafkaSettings, TopicSettings, MqttConfig, MetricsSettings, AlarmConfig)
}
_PROCESSES: dict[str, type[_Section]] = {
    cls.SECTION: cls for cls in (MonitorSettings, ProducerSettings, TrainerSettings)
}
_ALL_SECTIONS = [*_SHARED, *_PROCESSES]

S = TypeVar("S", bound=_Section)


def known_keys(section: str) -> list[str]:
    """The keys a file section (or ``BEATMON_<SECTION>__``) may hold, in order."""
    if section in _SHARED:
        return [item.name for item in fields(cast(Any, _SHARED[section]))]
    return [
        item.name
        for item in fields(cast(Any, _PROCESSES[section]))
        if item.name not in _SHARED
    ]


def load_monitor_settings(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> MonitorSettings:
    """The monitor's settings; see the module docstring for the sources."""
    return _load(MonitorSettings, path, env, overrides)


def load_replay_settings(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> ProducerSettings:
    """The replay producer's settings; see the module docstring for the sources."""
    return _load(ProducerSettings, path, env, overrides)


def load_trainer_settings(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> TrainerSettings:
    """The trainer's settings; see the module docstring for the sources."""
    return _load(TrainerSettings, path, env, overrides)


@dataclass(frozen=True)
class _Raw:
    """One value as a source gave it; ``text`` values are parsed by type."""

    value: object
    source: str
    text: bool


_Layer = dict[str, dict[str, _Raw]]


def _load(
    cls: type[S],
    path: Path | None,
    env: Mapping[str, str] | None,
    overrides: Mapping[str, object] | None,
) -> S:
    env = os.environ if env is None else env
    layers: list[_Layer] = []
    file = _find_file(path, env)
    if file is not None:
        layers.append(_read_file(file))
    layers.append(_read_env(env))
    layers.append(_read_overrides(overrides or {}, cls))

    nested = {
        name: _build(_SHARED[name], _merge(layers, name), {})
        for name in (item.name for item in fields(cast(Any, cls)))
        if name in _SHARED
    }
    return _build(cls, _merge(layers, cls.SECTION), nested)


def _merge(layers: list[_Layer], section: str) -> dict[str, _Raw]:
    merged: dict[str, _Raw] = {}
    for layer in layers:
        merged.update(layer.get(section, {}))
    return merged


def _build(cls: type[S], raws: dict[str, _Raw], nested: Mapping[str, object]) -> S:
    """Convert, construct and check one section; errors name key and source."""
    hints = get_type_hints(cls)
    kwargs: dict[str, object] = dict(nested)
    for name, raw in raws.items():
        key = f"{cls.SECTION}.{name}"
        try:
            kwargs[name] = _convert(raw.value, hints[name], raw.text)
        except _WrongValue as exc:
            raise ConfigError(f"{raw.source}: {key}: {exc}") from None
    try:
        settings = cls(**kwargs)
        settings.check_files()
    except SettingError as exc:
        raise ConfigError(f"{_source_of(exc.keys, cls.SECTION, raws)}: {exc}") from exc
    return settings


def _source_of(keys: tuple[str, ...], section: str, raws: dict[str, _Raw]) -> str:
    """Where the first of ``keys`` that was given a value came from.

    An explicit null or empty value counts only when no key has a value: the
    shipped files list every key, so for "X required when Y" the source of
    interest is Y's.
    """
    given = [
        raws[name]
        for owner, _, name in (key.partition(".") for key in keys)
        if owner == section and name in raws
    ]
    for raw in given:
        if raw.value is not None and raw.value != "":
            return raw.source
    return given[0].source if given else DEFAULT_SOURCE


def _find_file(path: Path | None, env: Mapping[str, str]) -> tuple[Path, str] | None:
    """The settings file to read and how to name it, or None for none."""
    if path is not None:
        if not _is_file(Path(path)):
            raise ConfigError(f"{path}: no such settings file")
        return Path(path), str(path)
    named = env.get(CONFIG_ENV, "")
    if named:
        if not _is_file(Path(named)):
            raise ConfigError(f"{CONFIG_ENV}: no such settings file: {named}")
        return Path(named), named
    if DEFAULT_CONFIG_PATH.is_file():
        return DEFAULT_CONFIG_PATH, str(DEFAULT_CONFIG_PATH)
    return None


def _read_file(file: tuple[Path, str]) -> _Layer:
    """The file's sections; sources carry the file name and line."""
    path, shown = file
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{shown}: cannot read the settings file ({exc})") from exc

    try:
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        raise ConfigError(
            f"{shown}:{line}: not valid YAML: character U+{exc.character:04X} is "
            "not allowed in a YAML file"
        ) from None
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except RecursionError:
        raise ConfigError(f"{shown}: not valid YAML: nested too deeply") from None
    except ValueError as exc:
        # PyYAML's own errors are not ValueErrors; this is a value it parsed
        # but Python could not convert, such as an integer of 5,000 digits.
        raise ConfigError(f"{shown}: a value cannot be read: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        # The message is rebuilt without PyYAML's snippet of the offending
        # line, which could hold a password.
        mark = exc.problem_mark or exc.context_mark
        where = f":{mark.line + 1}" if mark is not None else ""
        column = f" (column {mark.column + 1})" if mark is not None else ""
        problem = exc.problem or exc.context or "syntax error"
        raise ConfigError(
            f"{shown}{where}: not valid YAML: {problem}{column}"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{shown}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()

    if data is None:
        return {}
    if not isinstance(data, dict) or not isinstance(root, yaml.MappingNode):
        raise ConfigError(
            f"{shown}: expected sections such as 'kafka:' and 'monitor:' at the top, "
            f"got {type(data).__name__}"
        )
    layer: _Layer = {}
    for section_node, body_node in root.value:
        section = section_node.value
        where = f"{shown}:{section_node.start_mark.line + 1}"
        _check_section(section, where)
        if section in layer:
            raise ConfigError(f"{where}: section {section!r} appears twice")
        layer[section] = {}
        body = data[section]
        if body is None:
            continue
        if not isinstance(body, dict) or not isinstance(body_node, yaml.MappingNode):
            raise ConfigError(
                f"{where}: {section}: expected 'key: value' lines, "
                f"got {type(body).__name__}"
            )
        for key_node, _ in body_node.value:
            key = key_node.value
            where = f"{shown}:{key_node.start_mark.line + 1}"
            _check_key(section, key, where)
            if key in layer[section]:
                raise ConfigError(f"{where}: {section}.{key}: appears twice")
            layer[section][key] = _Raw(body[key], where, text=False)
    return layer


def _read_env(env: Mapping[str, str]) -> _Layer:
    """``BEATMON_<SECTION>__<KEY>`` variables by section and key."""
    layer: _Layer = {}
    for name, text in env.items():
        if (
            not name.startswith(ENV_PREFIX)
            or name == CONFIG_ENV
            or name.startswith(IGNORED_ENV_PREFIXES)
        ):
            continue
        rest = name[len(ENV_PREFIX) :]
        section, sep, key = rest.lower().partition("__")
        if not sep:
            # A single underscore after a section name is a likely typo.
            for known in _ALL_SECTIONS:
                if section.startswith(known + "_"):
                    hint = f"{ENV_PREFIX}{known.upper()}__{rest[len(known) + 1 :]}"
                    raise ConfigError(
                        f"{name}: not a settings variable; did you mean {hint}?"
                    )
            continue
        _check_section(section, name)
        _check_key(section, key, name)
        layer.setdefault(section, {})[key] = _Raw(text, name, text=True)
    return layer


def _read_overrides(overrides: Mapping[str, object], cls: type[_Section]) -> _Layer:
    """Dotted ``section.key`` values from the command line; None means not given."""
    used = [cls.SECTION, *(f.name for f in fields(cast(Any, cls)) if f.name in _SHARED)]
    layer: _Layer = {}
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        _check_section(section, CLI_SOURCE)
        _check_key(section, key, CLI_SOURCE)
        if section not in used:
            raise ConfigError(
                f"{CLI_SOURCE}: {dotted}: not a {cls.SECTION} setting "
                f"(its sections: {', '.join(used)})"
            )
        if value is not None:
            raw = _Raw(value, CLI_SOURCE, text=isinstance(value, str))
            layer.setdefault(section, {})[key] = raw
    return layer


def _check_section(section: object, source: str) -> None:
    if section not in _ALL_SECTIONS:
        raise ConfigError(
            f"{source}: unknown section {section!r} (known: {', '.join(_ALL_SECTIONS)})"
        )


def _check_key(section: str, key: object, source: str) -> None:
    known = known_keys(section)
    if key in known:
        return
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise ConfigError(
        f"{source}: {section}.{key}: unknown key{hint} (known: {', '.join(known)})"
    )


class _WrongValue(Exception):
    """A value does not fit its key's type; the message says what was expected."""


def _convert(value: object, kind: Any, text: bool) -> object:
    """``value`` as the type ``kind``; ``text`` values are parsed from strings."""
    if get_origin(kind) in (Union, types.UnionType):
        inner = next(arg for arg in get_args(kind) if arg is not type(None))
        if value is None or (text and isinstance(value, str) and not value.strip()):
            return None
        return _convert(value, inner, text)
    if value is None:
        raise _WrongValue(f"must be set to {_expected(kind)}")
    if text and isinstance(value, str) and kind not in (str, Secret):
        value = value.strip()

    if get_origin(kind) is Literal:
        if value in get_args(kind):
            return value
        choices = ", ".join(str(arg) for arg in get_args(kind))
        raise _WrongValue(f"must be one of {choices}; got {value!r}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if text and isinstance(value, str) and value.lower() in _TRUE_WORDS:
            return True
        if text and isinstance(value, str) and value.lower() in _FALSE_WORDS:
            return False
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if text and isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif kind is float:
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:
                raise _WrongValue(
                    "must be a finite number, got an integer too large for a float"
                ) from None
        elif isinstance(value, str):
            # Also for the file: YAML 1.1 reads 1e3 (no dot) as a string.
            try:
                number = float(value)
            except ValueError:
                number = None
        if number is not None:
            if not math.isfinite(number):
                raise _WrongValue(f"must be a finite number, got {value!r}")
            return number
    elif kind is str:
        if isinstance(value, str):
            return value
        raise _WrongValue(f"expected a string, got {value!r}; put it in quotes")
    elif kind is Path:
        if isinstance(value, (str, Path)) and str(value).strip():
            return Path(value)
    elif kind is Secret:
        if isinstance(value, Secret):
            return value
        if isinstance(value, str):
            return Secret(value)
        raise _WrongValue(f"expected {_expected(kind)}, got {_kind_of(value)}")
    else:
        raise TypeError(f"no conversion to {kind!r}")
    raise _WrongValue(f"expected {_expected(kind)}, got {value!r}")


def _expected(kind: Any) -> str:
    names = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        Path: "a path",
        Secret: "a string",
    }
    if get_origin(kind) is Literal:
        return "one of " + ", ".join(str(arg) for arg in get_args(kind))
    return names.get(kind, repr(kind))


def _kind_of(value: object) -> str:
    """A value's type in words; for secrets, whose value must not be shown."""
    return f"a value of type {type(value).__name__} (not shown)"
