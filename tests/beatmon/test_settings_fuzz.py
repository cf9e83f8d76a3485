"""The settings reader, fuzzed: any file, YAML or not, and any environment
value give settings or a ConfigError that names where the problem is."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beatmon.errors import ConfigError
from beatmon.settings import (
    known_keys,
    load_monitor_settings,
    load_replay_settings,
    load_trainer_settings,
)
from tests.beatmon.test_settings import SECTIONS
from tests.serving_bundles import write_serving_bundle

LOADERS: list[Callable[..., Any]] = [
    load_monitor_settings,
    load_replay_settings,
    load_trainer_settings,
]

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(),
    st.text(max_size=10),
    st.sampled_from(
        [10**400, "1e400", "~", "0x10", "1_000", "on", "x" * 5000, 0, -1, 65536]
    ),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(max_size=5), inner, max_size=3),
    ),
    max_leaves=6,
)


@st.composite
def _settings_file(draw: st.DrawFn) -> bytes:
    """Bytes, YAML-ish punctuation, or YAML with known and unknown sections."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=300))
    if kind == 1:
        alphabet = st.sampled_from(list(":-[]{}&*!|>'\"%@` \n\t#,?ab01.\x00\x85"))
        return draw(st.text(alphabet=alphabet, max_size=120)).encode()
    document: dict[str, Any] = {}
    for _ in range(draw(st.integers(0, 4))):
        section = draw(st.one_of(st.sampled_from(SECTIONS), st.text(max_size=4)))
        keys = known_keys(section) if section in SECTIONS else ["x"]
        key = st.one_of(st.sampled_from(keys), st.text(max_size=4))
        document[section] = draw(
            st.one_of(st.none(), _VALUES, st.dictionaries(key, _VALUES, max_size=4))
        )
    flow = draw(st.booleans())
    text = yaml.safe_dump(document, allow_unicode=True, default_flow_style=flow)
    return text.encode("utf-8", errors="surrogatepass")


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=_settings_file(), load=st.sampled_from(LOADERS))
def test_fuzz_any_settings_file_loads_or_names_itself_in_a_config_error(
    tmp_path: Path, data: bytes, load: Callable[..., Any]
) -> None:
    path = tmp_path / "beatmon.yaml"
    path.write_bytes(data)
    try:
        load(path, env={})
    except ConfigError as exc:
        # A rule broken between keys none of which the file set is the
        # defaults' fault; anything else names the file.
        assert str(path) in str(exc) or "built-in default" in str(exc), str(exc)


@pytest.fixture(scope="module")
def a_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_serving_bundle(
        tmp_path_factory.mktemp("settings") / "bundle", version="fuzz"
    )


@settings(max_examples=200, deadline=None)
@given(
    section=st.sampled_from(SECTIONS),
    data=st.data(),
    value=st.one_of(
        st.text(max_size=20),
        st.sampled_from(["9" * 5000, "1" + "0" * 400, "nan", "-inf", "x" * 5000]),
    ),
    load=st.sampled_from(LOADERS),
)
def test_fuzz_any_environment_value_loads_or_names_its_variable(
    a_bundle: Path,
    section: str,
    data: st.DataObject,
    value: str,
    load: Callable[..., Any],
) -> None:
    key = data.draw(st.sampled_from(known_keys(section)))
    name = f"BEATMON_{section.upper()}__{key.upper()}"
    # The monitor's settings need a bundle that exists, unless that is the
    # value under test.
    env = {"BEATMON_MONITOR__BUNDLE": str(a_bundle)}
    env[name] = value.replace("\x00", "")
    try:
        load(None, env=env)
    except ConfigError as exc:
        assert name in str(exc) or "built-in default" in str(exc), str(exc)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # PyYAML's reader refuses these characters before parsing starts.
        ("monitor:\n  group_id: a\x00b\n", r":2: not valid YAML: character U\+0000"),
        ("\x07", r":1: not valid YAML: character U\+0007"),
        # The composer recurses once per level.
        ("monitor:\n  max_batch: " + "[" * 5000 + "]" * 5000, "nested too deeply"),
        ("monitor:\n  max_batch: " + "9" * 5000, "a value cannot be read"),
        # A float key given an integer too large for a float.
        ("monitor:\n  report_every_s: 1" + "0" * 400, "an integer too large"),
        # Paths longer than the system takes are missing files, not OSErrors.
        ("monitor:\n  bundle: " + "b" * 5000, "monitor.bundle: no model bundle"),
        ("mqtt:\n  tls: true\n  ca_file: " + "c" * 5000, "mqtt.ca_file: no such"),
    ],
)
def test_regressions_found_by_fuzzing_are_config_errors(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "beatmon.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected) as info:
        load_monitor_settings(path, env={})
    assert str(info.value).startswith(str(path))


def test_a_settings_path_too_long_for_the_system_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="BEATMON_CONFIG: no such settings file"):
        load_monitor_settings(None, env={"BEATMON_CONFIG": "s" * 5000})
