"""The per-patient alarm policy: a patient's beat flags in, patient alarms out.

Every flagged beat stays a beat-level alert. This policy sits beside them and
raises far fewer, patient-level *alarms*, each one an *episode* that is
raised once, escalates in place and ends with an event of its own. It knows
nothing of the model, the threshold or Kafka: it takes beats and their flags
and returns events and bytes to publish.

Time is beat time, the ``produced_at`` of the beats, never the wall clock,
so a replay or a restart gives the same events as the live run did.

The rules, per patient, applied to its beats in ``seq`` order:

- The window holds the flags of the patient's last ``window_beats`` beats
  (fewer until it has seen that many). Beats lost upstream leave no gap:
  the window is the last beats that arrived.
- No episode open: when ``low_k`` of the window are flagged, an episode is
  *raised* at low priority, or at medium when ``medium_k`` already are.
- The medium condition starts at the beat where ``medium_k`` of the window
  are flagged and lasts while at least ``low_k`` still are. An open episode
  *escalates* to medium when the medium condition starts, and to high at
  the first beat at least ``escalate_after_s`` of beat time after it
  started. Priority never falls within an episode.
- An open episode *ends* at the ``clear_after_beats``-th consecutive beat
  at which at most ``clear_k`` of the window are flagged.
- Cooldown: if the alarm condition returns less than ``cooldown_s`` of beat
  time after an episode ended, that episode *resumes*: a ``raised`` event
  with the same ``episode_id`` and ``started_at``, and a priority taken
  afresh from the window. Later, a new episode with a new id.
- A patient with no beat for ``forget_after_s`` of beat time (before the
  newest beat of any patient, leaving out beat times more than five minutes
  ahead of this machine's clock) and no open episode has left the monitor:
  its state is dropped, and beats that come later start afresh.

Defaults, and why (facts from the project's reference notes; counts from
simulating one patient-day at 75 bpm, 108,000 beats, whose flags are false
and independent at the default threshold's rate of 5%, about 5,400 beat
alerts, over 30 such days):

- Most monitor alarms are not actionable: 87% in a paediatric ICU and 99%
  on a ward (Bonafide et al. 2015); 88.8% of arrhythmia alarms were false
  in an ICU that heard 187 audible alarms per bed per day (Drew et al.
  2014). What works is delay, escalation instead of repetition, and
  de-duplication per patient.
- ``window_beats=10`` (about 8 s at 75 bpm) and ``low_k=4``: an isolated
  abnormal beat stays a beat alert and raises nothing. False flags raise
  about 36 low alarms a day; ``low_k=3`` would raise about 270, more than
  the 187 audible alarms of every kind in that ICU.
- ``medium_k=6``: most of the last ten beats abnormal calls for a prompt
  response (IEC 60601-1-8 medium). False flags reach it about once in ten
  days; ``medium_k=5`` would do so three times a day.
- ``escalate_after_s=30``: high priority (immediate response) only once
  the medium condition has lasted 30 s, the longest alarm delay bedside
  monitors offer (0 to about 30 s). False flags never reached it.
- ``clear_k=1`` and ``clear_after_beats=20``: an episode ends after 20
  beats (about 16 s) in which at most one of the last ten was flagged, so
  it does not end and start again on every normal beat of a run.
- ``cooldown_s=60``: a relapse within a minute of the end is the same
  episode, not a new alarm.
- ``forget_after_s=900``: a quarter of an hour without a beat, far past
  the cooldown, is a patient unplugged or discharged. Without it, every
  patient ever seen would stay in memory and be written again with each
  checkpoint of its bucket: a soak whose patients changed every few
  minutes ended with 43,000 of them, of whom 8,000 still sent beats.

Restart safety: beats are delivered at least once. A beat whose ``seq`` is
not above the last one applied for its patient is ignored, so re-delivered
beats neither count twice nor raise an alarm twice. :meth:`AlarmPolicy.snapshot`
and :meth:`AlarmPolicy.restore` carry a patient's whole state across a
restart or a partition move, so a restored run goes on exactly as an
uninterrupted one would.

Alarm event, version 1 (key: the patient id)::

    {"v": 1, "kind": "raised", "episode_id": "9b1e...", "patient": "p0007",
     "priority": "low", "seq": 42, "beat_time": 1764763200.125,
     "started_at": 1764763200.125, "flagged_in_window": 4, "window": 10,
     "model_version": "dense-20261203T130503Z-f501c00c"}

- ``kind``: ``"raised"``, ``"escalated"`` or ``"ended"``;
- ``episode_id``: derived from the model version, the patient and the
  ``seq`` of the beat that opened the episode, so reprocessing the same
  beats gives the same id; a ``raised`` event whose id was seen before is
  the episode resuming within the cooldown. One event is identified by
  ``(episode_id, kind, seq)``; subscribers drop duplicates by it;
- ``priority``: ``"low"``, ``"medium"`` or ``"high"``; for ``ended``, the
  highest the episode reached;
- ``seq`` and ``beat_time``: the beat that caused the event and its
  ``produced_at``, Unix seconds; ``started_at``: the beat time the episode
  opened;
- ``flagged_in_window`` of the ``window`` last beats were flagged then;
- ``model_version``: the model that scored the beat that caused the event
  (absent when the policy was given none). A patient's state does not
  depend on the model: when the model is changed while running, open
  episodes go on, with their ids, under the new one.

Patient status, version 1 (retained, one per patient)::

    {"v": 1, "patient": "p0007", "state": "alarm", "priority": "medium",
     "episode_id": "9b1e...", "since": 1764763230.5}

- ``state``: ``"alarm"`` while an episode is open, else ``"normal"``;
- ``priority`` and ``episode_id``: of the open episode, else null;
- ``since``: beat time the patient entered this state, null before its
  first alarm.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

import numpy as np

from beatmon.errors import ConfigError, MessageError
from beatmon.messages import MAX_PATIENT_ID, Beat

logger = logging.getLogger(__name__)

ALARM_VERSION = 1
STATUS_VERSION = 1
STATE_VERSION = 1
MAX_WINDOW_BEATS = 1000
# A beat time further ahead of this machine's clock comes from a device whose
# clock is wrong; it must not make every other patient look long gone.
MAX_BEAT_TIME_AHEAD_S = 300.0

Priority = Literal["low", "medium", "high"]
EventKind = Literal["raised", "escalated", "ended"]
PatientStatus = Literal["normal", "alarm"]

_PRIORITIES: tuple[Priority, ...] = get_args(Priority)
_RANK: dict[Priority | None, int] = {None: 0, "low": 1, "medium": 2, "high": 3}


class AlarmSettingError(ConfigError):
    """An alarm setting breaks a rule.

    ``field`` is the setting at fault, ``value`` its value, ``reason`` the
    rule, and ``related`` the other settings the rule involves.
    """

    def __init__(
        self, field: str, value: object, reason: str, related: tuple[str, ...] = ()
    ) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        self.related = related
        super().__init__(f"alarm setting {field}={value!r}: {reason}")


@dataclass(frozen=True)
class AlarmSettings:
    """When a patient's flags raise, escalate and end an alarm.

    Counts are flagged beats among the last ``window_beats`` beats; times are
    seconds of beat time. See the module docstring for the rules and for why
    the defaults are what they are.
    """

    window_beats: int = 10
    low_k: int = 4
    medium_k: int = 6
    escalate_after_s: float = 30.0
    clear_k: int = 1
    clear_after_beats: int = 20
    cooldown_s: float = 60.0
    # A patient without a beat for this long, and without an open episode, is
    # forgotten (a patient gone from the monitor); 0 keeps every patient.
    forget_after_s: float = 900.0

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if item.type == "int" and (
                not isinstance(value, int) or isinstance(value, bool)
            ):
                raise AlarmSettingError(item.name, value, "must be an integer")
            if item.type == "float" and (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or not math.isfinite(value)
                or value < 0
            ):
                raise AlarmSettingError(
                    item.name, value, "must be a finite number of seconds, 0 or more"
                )
        n = self.window_beats
        if not 1 <= n <= MAX_WINDOW_BEATS:
            self._fail("window_beats", f"must be from 1 to {MAX_WINDOW_BEATS}")
        if not 1 <= self.low_k <= n:
            self._fail(
                "low_k", f"must be from 1 to window_beats ({n})", ("window_beats",)
            )
        if not self.low_k <= self.medium_k <= n:
            self._fail(
                "medium_k",
                f"must be from low_k ({self.low_k}) to window_beats ({n})",
                ("low_k", "window_beats"),
            )
        if not 0 <= self.clear_k < self.low_k:
            self._fail(
                "clear_k", f"must be from 0 to low_k - 1 ({self.low_k - 1})", ("low_k",)
            )
        if self.clear_after_beats < 1:
            self._fail("clear_after_beats", "must be 1 or more")
        if 0 < self.forget_after_s < self.cooldown_s:
            self._fail(
                "forget_after_s",
                f"must be 0 (never) or at least cooldown_s ({self.cooldown_s:g})",
                ("cooldown_s",),
            )

    def _fail(self, name: str, rule: str, related: tuple[str, ...] = ()) -> None:
        raise AlarmSettingError(name, getattr(self, name), rule, related)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> AlarmSettings:
        """Settings from a config section; unknown keys are a :class:`ConfigError`."""
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown alarm setting(s) {', '.join(unknown)}; known: "
                f"{', '.join(sorted(known))}"
            )
        return cls(**data)


def make_episode_id(patient: str, seq: int, model_version: str = "") -> str:
    """The id of the episode opened by beat ``seq`` of ``patient``."""
    text = f"alarm\x1f{model_version}\x1f{patient}\x1f{seq}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class AlarmEvent:
    """One change of a patient's alarm episode; the schema is in the module doc."""

    kind: EventKind
    episode_id: str
    patient: str
    priority: Priority
    seq: int
    beat_time: float
    started_at: float
    flagged_in_window: int
    window: int
    model_version: str = ""

    def encode(self) -> bytes:
        data: dict[str, Any] = {"v": ALARM_VERSION, **self.__dict__}
        if not self.model_version:
            del data["model_version"]
        return json.dumps(data, separators=(",", ":")).encode()


def _load_object(payload: bytes | str, what: str, version: int) -> dict[str, Any]:
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise MessageError(f"{what} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MessageError(f"{what} must be a JSON object")
    if data.get("v") != version:
        raise MessageError(f"unknown {what} schema version {data.get('v')!r}")
    return data


def _get(
    data: Mapping[str, Any],
    name: str,
    kind: type | tuple[type, ...],
    what: str,
    *,
    nullable: bool = False,
) -> Any:
    if name not in data:
        raise MessageError(f"{what} field {name!r} is missing")
    value = data[name]
    if value is None and nullable:
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise MessageError(f"{what} field {name!r} has type {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise MessageError(f"{what} field {name!r} is not finite")
    return value


def _choice(value: Any, choices: tuple[str, ...], name: str, what: str) -> Any:
    if value not in choices:
        raise MessageError(
            f"{what} field {name!r} is {value!r}, not one of {', '.join(choices)}"
        )
    return value


def decode_alarm_event(payload: bytes) -> AlarmEvent:
    """Decode and validate an alarm event; :class:`MessageError` if it is not one."""
    what = "alarm event"
    data = _load_object(payload, what, ALARM_VERSION)
    number = (int, float)
    return AlarmEvent(
        kind=_choice(data.get("kind"), get_args(EventKind), "kind", what),
        episode_id=_get(data, "episode_id", str, what),
        patient=_get(data, "patient", str, what),
        priority=_choice(data.get("priority"), _PRIORITIES, "priority", what),
        seq=_get(data, "seq", int, what),
        beat_time=float(_get(data, "beat_time", number, what)),
        started_at=float(_get(data, "started_at", number, what)),
        flagged_in_window=_get(data, "flagged_in_window", int, what),
        window=_get(data, "window", int, what),
        model_version=(
            _get(data, "model_version", str, what) if "model_version" in data else ""
        ),
    )


@functools.lru_cache(maxsize=65536)
def _json_text(text: str | None) -> str:
    return "null" if text is None else json.dumps(text)


def _json_number(value: float | None) -> str:
    # Beat times are finite (decode_beat checks), so repr is valid JSON.
    return "null" if value is None else repr(float(value))


@dataclass(slots=True)
class PatientState:
    """Everything the policy remembers about one patient.

    ``window_mask`` holds the last flags, newest in bit 0; ``window_fill``
    is how many beats it holds. The episode fields stay after an episode
    ends, for the cooldown; ``active`` says whether it is open. Times are
    beat times, Unix seconds.
    """

    window_mask: int = 0
    window_fill: int = 0
    last_seq: int = -1
    active: bool = False
    episode_id: str | None = None
    priority: Priority | None = None
    started_at: float | None = None
    condition_since: float | None = None
    quiet_beats: int = 0
    ended_at: float | None = None
    since: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The state as a JSON-ready object."""
        return {item.name: getattr(self, item.name) for item in fields(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PatientState:
        """The state from :meth:`to_json`; :class:`MessageError` if malformed."""
        what = "patient state"
        number = (int, float)
        priority = data.get("priority")
        if priority is not None:
            _choice(priority, _PRIORITIES, "priority", what)
        state = cls(
            window_mask=_get(data, "window_mask", int, what),
            window_fill=_get(data, "window_fill", int, what),
            last_seq=_get(data, "last_seq", int, what),
            active=_get(data, "active", bool, what),
            episode_id=_get(data, "episode_id", str, what, nullable=True),
            priority=priority,
            started_at=_get(data, "started_at", number, what, nullable=True),
            condition_since=_get(data, "condition_since", number, what, nullable=True),
            quiet_beats=_get(data, "quiet_beats", int, what),
            ended_at=_get(data, "ended_at", number, what, nullable=True),
            since=_get(data, "since", number, what, nullable=True),
        )
        if state.window_mask < 0 or state.window_fill < 0 or state.quiet_beats < 0:
            raise MessageError(f"{what} has a negative window or count")
        if state.active and (
            state.episode_id is None
            or state.priority is None
            or state.started_at is None
        ):
            raise MessageError(f"{what} has an open episode without id or priority")
        return state


def _material(state: PatientState) -> tuple[object, ...]:
    """The state's fields but ``last_seq``: what decides future events."""
    return (
        state.window_mask,
        state.window_fill,
        state.active,
        state.episode_id,
        state.priority,
        state.started_at,
        state.condition_since,
        state.quiet_beats,
        state.ended_at,
        state.since,
    )


class AlarmPolicy:
    """Turns beat flags into patient alarm episodes; see the module docstring.

    ``model_version`` goes into the ids of the episodes it opens, as it does
    into alert ids, and into every event; the monitor sets it anew when it
    puts another model in service.
    ``ignored_beats`` counts the re-delivered beats skipped so far.
    """

    def __init__(
        self,
        settings: AlarmSettings | None = None,
        *,
        model_version: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings or AlarmSettings()
        self.model_version = model_version
        self.clock = clock
        self.ignored_beats = 0
        self._states: dict[str, PatientState] = {}
        # What was last saved (or restored) per patient, beat counter aside.
        self._saved: dict[str, tuple[object, ...]] = {}
        self._touched: set[str] = set()
        # Beat time of each patient's last beat, and the newest of all: the
        # clock that decides when a patient counts as gone.
        self._last_beat_at: dict[str, float] = {}
        self._newest_beat_at = -math.inf
        self._idle_checked_at = -math.inf

    def apply(
        self, beats: Sequence[Beat], flagged: Sequence[bool] | np.ndarray
    ) -> list[AlarmEvent]:
        """Apply one batch of beats, in consumption order; return its events.

        ``flagged[i]`` is the flag of ``beats[i]``. A beat whose ``seq`` is not
        above the last one applied for its patient is ignored.
        """
        flags = flagged.tolist() if isinstance(flagged, np.ndarray) else flagged
        if len(flags) != len(beats):
            raise ValueError(f"{len(beats)} beats but {len(flags)} flags")
        window = self.settings.window_beats
        full = (1 << window) - 1
        states = self._states
        touched = self._touched
        last_beat_at = self._last_beat_at
        events: list[AlarmEvent] = []
        ignored = 0

        for beat, flag in zip(beats, flags, strict=True):
            patient = beat.patient
            state = states.get(patient)
            if state is None:
                state = states[patient] = PatientState()
            if beat.seq <= state.last_seq:
                ignored += 1
                continue
            state.last_seq = beat.seq
            last_beat_at[patient] = beat.produced_at
            touched.add(patient)
            if state.window_fill < window:
                state.window_fill += 1
            if flag:
                state.window_mask = ((state.window_mask << 1) | 1) & full
            else:
                state.window_mask = (state.window_mask << 1) & full
                # Without a flag the count cannot rise, so only an open
                # episode has anything to do.
                if not state.active:
                    continue
            self._step(patient, beat, state, events)

        if beats:
            latest = self.clock() + MAX_BEAT_TIME_AHEAD_S
            newest = max(
                (b.produced_at for b in beats if b.produced_at <= latest),
                default=self._newest_beat_at,
            )
            self._newest_beat_at = max(self._newest_beat_at, newest)
        if ignored:
            self.ignored_beats += ignored
            logger.debug("ignored %d re-delivered beats", ignored)
        return events

    def _step(
        self, patient: str, beat: Beat, state: PatientState, events: list[AlarmEvent]
    ) -> None:
        """Advance one patient's episode by one beat already in its window."""
        settings = self.settings
        count = state.window_mask.bit_count()
        now = float(beat.produced_at)

        opened = not state.active
        if opened:
            if count < settings.low_k:
                return
            self._open(patient, beat.seq, now, state)

        # The medium condition, with low_k as its hysteresis floor.
        if count >= settings.medium_k:
            if state.condition_since is None:
                state.condition_since = now
        elif count < settings.low_k:
            state.condition_since = None

        target = state.priority
        if count >= settings.medium_k and _RANK[target] < _RANK["medium"]:
            target = "medium"
        since = state.condition_since
        if since is not None and now - since >= settings.escalate_after_s:
            target = "high"
        if opened:
            state.priority = target
            events.append(self._event("raised", patient, beat.seq, now, state, count))
            return
        if target != state.priority:
            state.priority = target
            events.append(
                self._event("escalated", patient, beat.seq, now, state, count)
            )

        if count > settings.clear_k:
            state.quiet_beats = 0
            return
        state.quiet_beats += 1
        if state.quiet_beats >= settings.clear_after_beats:
            state.active = False
            state.ended_at = state.since = now
            state.condition_since = None
            state.quiet_beats = 0
            events.append(self._event("ended", patient, beat.seq, now, state, count))

    def _open(self, patient: str, seq: int, now: float, state: PatientState) -> None:
        """Open a new episode at this beat, or resume the last within the cooldown."""
        ended_at = state.ended_at
        resume = (
            state.episode_id is not None
            and ended_at is not None
            and now - ended_at < self.settings.cooldown_s
        )
        if not resume:
            state.episode_id = make_episode_id(patient, seq, self.model_version)
            state.started_at = now
        state.active = True
        state.priority = "low"
        state.condition_since = None
        state.since = now
        state.quiet_beats = 0

    def _event(
        self,
        kind: EventKind,
        patient: str,
        seq: int,
        now: float,
        state: PatientState,
        count: int,
    ) -> AlarmEvent:
        event = AlarmEvent(
            kind=kind,
            episode_id=state.episode_id or "",
            patient=patient,
            priority=state.priority or "low",
            seq=seq,
            beat_time=now,
            started_at=state.started_at if state.started_at is not None else now,
            flagged_in_window=count,
            window=state.window_fill,
            model_version=self.model_version,
        )
        logger.debug(
            "alarm %s: patient=%s seq=%d priority=%s episode=%s flagged=%d/%d",
            kind,
            patient,
            seq,
            event.priority,
            event.episode_id,
            count,
            state.window_fill,
        )
        return event

    def touched_patients(self) -> set[str]:
        """Patients whose state changed since the last call, which clears the set."""
        touched, self._touched = self._touched, set()
        return touched

    def state(self, patient: str) -> PatientState:
        """A copy of the patient's state (a fresh one if never seen)."""
        return PatientState.from_json(self._state_json(patient))

    def _state_json(self, patient: str) -> dict[str, Any]:
        state = self._states.get(patient)
        return (state or PatientState()).to_json()

    def active_alarms(self) -> dict[str, Priority]:
        """The priority of every patient with an open episode."""
        return {
            patient: state.priority
            for patient, state in self._states.items()
            if state.active and state.priority is not None
        }

    def status_payload(self, patient: str) -> bytes:
        """The patient's status message (schema in the module docstring)."""
        state = self._states.get(patient) or PatientState()
        active = state.active
        status: PatientStatus = "alarm" if active else "normal"
        data: dict[str, Any] = {
            "v": STATUS_VERSION,
            "patient": patient,
            "state": status,
            "priority": state.priority if active else None,
            "episode_id": state.episode_id if active else None,
            "since": state.since,
        }
        return json.dumps(data, separators=(",", ":")).encode()

    def snapshot(self, patient: str) -> bytes:
        """The patient's whole state as versioned JSON, for a compacted topic.

        The object holds ``v``, ``patient`` and the fields of
        :meth:`PatientState.to_json`.
        """
        s = self._states.get(patient) or PatientState()
        # Formatted by hand: a snapshot per touched patient and batch makes this
        # as hot as apply itself, and json.dumps takes about four times as long.
        return (
            f'{{"v":{STATE_VERSION},"patient":{_json_text(patient)},'
            f'"window_mask":{s.window_mask:d},"window_fill":{s.window_fill:d},'
            f'"last_seq":{s.last_seq:d},"active":{"true" if s.active else "false"},'
            f'"episode_id":{_json_text(s.episode_id)},'
            f'"priority":{_json_text(s.priority)},'
            f'"started_at":{_json_number(s.started_at)},'
            f'"condition_since":{_json_number(s.condition_since)},'
            f'"quiet_beats":{s.quiet_beats:d},"ended_at":{_json_number(s.ended_at)},'
            f'"since":{_json_number(s.since)}}}'
        ).encode()

    def restore(self, patient: str, payload: bytes | None) -> None:
        """Replace the patient's state with a :meth:`snapshot`; ``None`` forgets it.

        A snapshot taken under a smaller or larger window keeps the newest
        flags that fit. Raises :class:`MessageError` for a malformed snapshot
        or one of another patient, and leaves the state as it was.
        """
        if payload is None:
            self.forget(patient)
            return
        data = _load_object(payload, "patient state", STATE_VERSION)
        if data.get("patient") != patient:
            raise MessageError(
                f"snapshot is of patient {data.get('patient')!r}, not {patient!r}"
            )
        if len(patient) > MAX_PATIENT_ID:
            raise MessageError(f"patient id must have 1 to {MAX_PATIENT_ID} characters")
        state = PatientState.from_json(data)
        window = self.settings.window_beats
        state.window_mask &= (1 << window) - 1
        state.window_fill = min(state.window_fill, window)
        self._states[patient] = state
        self._saved[patient] = _material(state)
        # Its last beat time was not saved: the patient counts from now.
        self._last_beat_at.pop(patient, None)
        logger.debug(
            "restored alarm state: patient=%s last_seq=%d active=%s",
            patient,
            state.last_seq,
            state.active,
        )

    def forget(self, patient: str) -> None:
        """Drop the patient's state, for example when its partition moves away."""
        self._states.pop(patient, None)
        self._saved.pop(patient, None)
        self._touched.discard(patient)
        self._last_beat_at.pop(patient, None)

    def idle_patients(self) -> list[str]:
        """Patients gone from the monitor: no beat for ``forget_after_s`` of beat
        time before the newest beat applied, and no open episode.

        The caller forgets them. Looks at every patient, so it answers at most
        once per tenth of ``forget_after_s`` of beat time and returns nothing
        in between. A patient restored from a snapshot counts from the first
        look after it.
        """
        after = self.settings.forget_after_s
        newest = self._newest_beat_at
        if not after or newest < self._idle_checked_at + after / 10:
            return []
        self._idle_checked_at = newest
        horizon = newest - after
        last_beat_at = self._last_beat_at
        return [
            patient
            for patient, state in self._states.items()
            if last_beat_at.setdefault(patient, newest) < horizon and not state.active
        ]

    def due_for_saving(self, patients: Iterable[str]) -> list[str]:
        """The patients whose state changed since it was last saved; now marked saved.

        A state that moved on only in ``last_seq`` is not due. The beats that
        advanced it lie behind offsets committed with this checkpoint, so they
        are never delivered again, and the older ``last_seq`` saved earlier
        filters nothing that can still arrive. For a patient whose beats are
        all normal this leaves almost nothing to write.
        """
        due = []
        for patient in patients:
            state = self._states.get(patient)
            if state is None:
                continue
            material = _material(state)
            if self._saved.get(patient) != material:
                due.append(patient)
                self._saved[patient] = material
        return due
