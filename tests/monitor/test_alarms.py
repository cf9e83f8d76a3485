"""The per-patient alarm policy, on plain beats: no Kafka, no model."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beatmon.errors import ConfigError, MessageError
from beatmon.messages import Beat
from monitor.alarms import (
    AlarmEvent,
    AlarmPolicy,
    AlarmSettings,
    PatientState,
    decode_alarm_event,
    make_episode_id,
)

T0 = 1_764_763_200.0


def beats_of(
    flags: str | Sequence[bool],
    patient: str = "p1",
    first_seq: int = 0,
    dt_s: float = 1.0,
) -> tuple[list[Beat], list[bool]]:
    """Beats one ``dt_s`` apart from ``first_seq``; ``"1"`` in a string is a flag."""
    marks = [c == "1" for c in flags] if isinstance(flags, str) else list(flags)
    beats = [
        Beat(patient, first_seq + i, T0 + (first_seq + i) * dt_s, ())
        for i in range(len(marks))
    ]
    return beats, marks


def summary(events: Sequence[AlarmEvent]) -> list[tuple[str, int, str]]:
    return [(e.kind, e.seq, e.priority) for e in events]


def run(flags: str, policy: AlarmPolicy | None = None) -> list[AlarmEvent]:
    policy = policy or AlarmPolicy()
    return policy.apply(*beats_of(flags))


# Ten flagged beats, then normal ones: raised, medium, then ended.
BURST = "1" * 10 + "0" * 40


def test_an_isolated_flagged_beat_raises_nothing() -> None:
    assert run(("1" + "0" * 9) * 20) == []


def test_three_of_ten_stays_below_the_default_low_k() -> None:
    assert run("1001001000" * 20) == []


def test_k_of_n_opens_a_low_alarm_at_the_kth_flag() -> None:
    events = run("1010101" + "0" * 5)

    assert len(events) == 1
    event = events[0]
    assert (event.kind, event.seq, event.priority) == ("raised", 6, "low")
    assert (event.flagged_in_window, event.window) == (4, 7)
    assert event.beat_time == event.started_at == T0 + 6
    assert event.episode_id == make_episode_id("p1", 6)


def test_opens_at_medium_when_the_count_reaches_medium_k_at_once() -> None:
    policy = AlarmPolicy(AlarmSettings(low_k=3, medium_k=3))
    assert summary(run("111", policy)) == [("raised", 2, "medium")]


def test_escalates_low_medium_high_at_the_configured_beat_time() -> None:
    events = run("1" * 40)

    # Low at the 4th flag, medium at the 6th (t = 5 s), high 30 s later.
    assert summary(events) == [
        ("raised", 3, "low"),
        ("escalated", 5, "medium"),
        ("escalated", 35, "high"),
    ]
    assert {e.episode_id for e in events} == {make_episode_id("p1", 3)}
    assert events[2].beat_time - events[1].beat_time == 30.0
    assert all(e.started_at == T0 + 3 for e in events)


def test_high_waits_for_the_first_beat_past_the_delay() -> None:
    events = AlarmPolicy().apply(*beats_of("1" * 60, dt_s=0.7))

    high = events[-1]
    medium_at = T0 + 5 * 0.7
    assert high.priority == "high"
    assert high.beat_time - medium_at >= 30.0
    assert high.beat_time - 0.7 - medium_at < 30.0


def test_the_medium_condition_holds_while_low_k_stay_flagged() -> None:
    # After the medium start, 1100 repeated keeps 5 or 6 of 10 flagged.
    flags = "111111" + "1100" * 10
    assert summary(run(flags))[-1] == ("escalated", 35, "high")


def test_the_medium_condition_resets_when_the_count_falls_below_low_k() -> None:
    # Seven normal beats after the 6th flag leave 3 of 10 flagged at seq 12...
    flags = "111111" + "0" * 7 + "1" * 40
    events = run(flags)

    # ...so high comes 30 s after 6 of 10 are flagged again (seq 18).
    assert summary(events) == [
        ("raised", 3, "low"),
        ("escalated", 5, "medium"),
        ("escalated", 48, "high"),
    ]


def test_zero_escalation_delay_goes_straight_to_high() -> None:
    policy = AlarmPolicy(AlarmSettings(escalate_after_s=0.0))
    assert summary(run("1" * 8, policy)) == [
        ("raised", 3, "low"),
        ("escalated", 5, "high"),
    ]


def test_ends_after_clear_after_beats_quiet_beats() -> None:
    policy = AlarmPolicy()
    events = run(BURST, policy)

    # At seq 18 only seq 9 is still flagged in the window; 20 quiet beats
    # later, seq 37, the episode ends at the highest priority it reached.
    assert summary(events) == [
        ("raised", 3, "low"),
        ("escalated", 5, "medium"),
        ("ended", 37, "medium"),
    ]
    assert events[-1].flagged_in_window == 0
    status = json.loads(policy.status_payload("p1"))
    assert status == {
        "v": 1,
        "patient": "p1",
        "state": "normal",
        "priority": None,
        "episode_id": None,
        "since": T0 + 37,
    }
    assert policy.active_alarms() == {}


def test_one_flag_per_window_still_lets_an_episode_end() -> None:
    events = run("1" * 10 + ("1" + "0" * 9) * 5)
    assert [e.kind for e in events][-1] == "ended"


def test_a_relapse_within_the_cooldown_resumes_the_same_episode() -> None:
    policy = AlarmPolicy()
    first = run(BURST, policy)
    # Ended at seq 37 (t0 + 37 s); flags again from seq 50.
    again = policy.apply(*beats_of("1111" + "0" * 40, first_seq=50))

    assert summary(again) == [("raised", 53, "low"), ("ended", 81, "low")]
    assert again[0].episode_id == first[0].episode_id
    assert again[0].started_at == first[0].started_at == T0 + 3


def test_a_relapse_after_the_cooldown_is_a_new_episode() -> None:
    policy = AlarmPolicy()
    first = run(BURST, policy)
    # The 4th flag lands at seq 97: exactly 60 s after the end, not within.
    again = policy.apply(*beats_of("1111", first_seq=94))

    assert summary(again) == [("raised", 97, "low")]
    assert again[0].episode_id == make_episode_id("p1", 97) != first[0].episode_id
    assert again[0].started_at == T0 + 97


def test_one_second_earlier_is_still_within_the_cooldown() -> None:
    policy = AlarmPolicy()
    first = run(BURST, policy)
    again = policy.apply(*beats_of("1111", first_seq=93))
    assert again[0].episode_id == first[0].episode_id


def test_status_of_an_open_episode() -> None:
    policy = AlarmPolicy()
    events = run("1" * 6, policy)

    assert json.loads(policy.status_payload("p1")) == {
        "v": 1,
        "patient": "p1",
        "state": "alarm",
        "priority": "medium",
        "episode_id": events[0].episode_id,
        "since": T0 + 3,
    }
    assert policy.active_alarms() == {"p1": "medium"}


def test_status_of_an_unknown_patient_is_normal() -> None:
    assert json.loads(AlarmPolicy().status_payload("nobody")) == {
        "v": 1,
        "patient": "nobody",
        "state": "normal",
        "priority": None,
        "episode_id": None,
        "since": None,
    }


def test_the_same_batch_twice_changes_nothing() -> None:
    policy = AlarmPolicy()
    beats, flags = beats_of("1" * 12)
    assert len(policy.apply(beats, flags)) == 2
    assert policy.touched_patients() == {"p1"}
    before = policy.snapshot("p1")

    assert policy.apply(beats, flags) == []
    assert policy.snapshot("p1") == before
    assert policy.touched_patients() == set()
    assert policy.ignored_beats == 12


def test_a_lower_seq_is_ignored_even_if_flagged() -> None:
    policy = AlarmPolicy()
    policy.apply(*beats_of("000", first_seq=10))
    assert policy.apply(*beats_of("1" * 10)) == []
    assert policy.state("p1").window_mask == 0


def test_gaps_in_seq_count_as_consecutive_beats() -> None:
    policy = AlarmPolicy()
    beats = [Beat("p1", seq, T0 + seq, ()) for seq in (0, 7, 8, 30)]
    events = policy.apply(beats, [True] * 4)
    assert summary(events) == [("raised", 30, "low")]


def test_touched_patients_clears_on_read() -> None:
    policy = AlarmPolicy()
    policy.apply(*beats_of("0", patient="a"))
    policy.apply(*beats_of("1", patient="b"))
    assert policy.touched_patients() == {"a", "b"}
    assert policy.touched_patients() == set()


def test_numpy_flags_are_accepted() -> None:
    beats, flags = beats_of("1" * 4)
    events = AlarmPolicy().apply(beats, np.array(flags))
    assert summary(events) == [("raised", 3, "low")]


def test_flags_must_match_the_beats() -> None:
    beats, flags = beats_of("11")
    with pytest.raises(ValueError, match="2 beats but 1 flags"):
        AlarmPolicy().apply(beats, flags[:1])


def test_patients_interleaved_are_independent() -> None:
    flags_a = "1" * 10 + "0" * 40 + "1111"
    flags_b = "0101010101" * 3 + "1" * 40
    beats_a, marks_a = beats_of(flags_a, patient="a")
    beats_b, marks_b = beats_of(flags_b, patient="b", dt_s=0.8)
    alone_a = AlarmPolicy().apply(beats_a, marks_a)
    alone_b = AlarmPolicy().apply(beats_b, marks_b)

    beats: list[Beat] = []
    flags: list[bool] = []
    for i in range(max(len(beats_a), len(beats_b))):
        for side_beats, side_flags in ((beats_a, marks_a), (beats_b, marks_b)):
            if i < len(side_beats):
                beats.append(side_beats[i])
                flags.append(side_flags[i])
    together = AlarmPolicy().apply(beats, flags)

    assert [e for e in together if e.patient == "a"] == alone_a
    assert [e for e in together if e.patient == "b"] == alone_b
    assert alone_a and alone_b


def test_episode_ids_depend_on_the_model_version() -> None:
    plain = run("1111")
    versioned = run("1111", AlarmPolicy(model_version="dense-1"))
    assert versioned[0].episode_id == make_episode_id("p1", 3, "dense-1")
    assert versioned[0].episode_id != plain[0].episode_id


# A rhythm that raises, escalates to high, ends, resumes and ends again, then
# raises a new episode after the cooldown.
LONG_RUN = "1" * 45 + "0" * 35 + "1010101" + "0" * 90 + "1" * 6 + "0" * 30


def crash_and_replay(
    flags: str, crash_at: int, replay_from: int, policy_settings: AlarmSettings
) -> list[AlarmEvent]:
    """Events of a run that crashes after ``crash_at`` beats and replays."""
    beats, marks = beats_of(flags)
    before = AlarmPolicy(policy_settings)
    events = before.apply(beats[:crash_at], marks[:crash_at])
    saved = before.snapshot("p1")

    after = AlarmPolicy(policy_settings)
    after.restore("p1", saved)
    return events + after.apply(beats[replay_from:], marks[replay_from:])


@pytest.mark.parametrize(
    ("crash_at", "replay_from"), [(4, 0), (20, 15), (40, 40), (90, 60), (181, 100)]
)
def test_restore_mid_episode_gives_the_uninterrupted_events(
    crash_at: int, replay_from: int
) -> None:
    uninterrupted = run(LONG_RUN)
    assert summary(uninterrupted) == [
        ("raised", 3, "low"),
        ("escalated", 5, "medium"),
        ("escalated", 35, "high"),
        ("ended", 72, "high"),
        ("raised", 86, "low"),
        ("ended", 113, "low"),
        ("raised", 180, "low"),
        ("escalated", 182, "medium"),
        ("ended", 210, "medium"),
    ]
    ids = [make_episode_id("p1", 3)] * 6 + [make_episode_id("p1", 180)] * 3
    assert [e.episode_id for e in uninterrupted] == ids

    replayed = crash_and_replay(LONG_RUN, crash_at, replay_from, AlarmSettings())

    assert replayed == uninterrupted
    assert len({(e.episode_id, e.kind, e.seq) for e in replayed}) == len(replayed)


def test_snapshot_round_trips_the_state() -> None:
    policy = AlarmPolicy()
    run(LONG_RUN[:50], policy)
    state = policy.state("p1")
    assert state.active

    data = json.loads(policy.snapshot("p1"))
    assert data == {"v": 1, "patient": "p1", **state.to_json()}
    assert PatientState.from_json(data) == state


def test_restore_none_forgets_the_patient() -> None:
    policy = AlarmPolicy()
    run("1111", policy)
    policy.restore("p1", None)
    assert policy.state("p1") == PatientState()


def test_restore_into_a_smaller_window_keeps_the_newest_flags() -> None:
    wide = AlarmPolicy(AlarmSettings(window_beats=20))
    wide.apply(*beats_of("0" * 20 + "1" * 10 + "0" * 4))
    narrow = AlarmPolicy()
    narrow.restore("p1", wide.snapshot("p1"))
    state = narrow.state("p1")
    assert (state.window_mask, state.window_fill) == (0b1111110000, 10)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "JSON object"),
        (b'{"v": 2, "patient": "p1"}', "version 2"),
        (b'{"v": 1, "patient": "p2"}', "patient 'p2', not 'p1'"),
        (b'{"v": 1, "patient": "p1"}', "'window_mask' is missing"),
    ],
)
def test_restore_refuses_a_bad_snapshot(payload: bytes, match: str) -> None:
    policy = AlarmPolicy()
    run("1111", policy)
    before = policy.snapshot("p1")
    with pytest.raises(MessageError, match=match):
        policy.restore("p1", payload)
    assert policy.snapshot("p1") == before


def test_restore_refuses_an_open_episode_without_an_id() -> None:
    data = {"v": 1, "patient": "p1", **PatientState(active=True).to_json()}
    with pytest.raises(MessageError, match="open episode"):
        AlarmPolicy().restore("p1", json.dumps(data).encode())


def test_event_encode_decode_round_trip() -> None:
    for event in run(LONG_RUN):
        payload = event.encode()
        assert json.loads(payload)["v"] == 1
        assert decode_alarm_event(payload) == event


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"v": 2}, "version 2"),
        ({"kind": "cleared"}, "'kind' is 'cleared'"),
        ({"priority": "urgent"}, "'priority' is 'urgent'"),
        ({"seq": "7"}, "'seq' has type str"),
        ({"window": True}, "'window' has type bool"),
        ({"beat_time": None}, "'beat_time' has type NoneType"),
    ],
)
def test_decode_refuses_a_bad_event(change: dict[str, object], match: str) -> None:
    data = json.loads(run("1111")[0].encode())
    data.update(change)
    with pytest.raises(MessageError, match=match):
        decode_alarm_event(json.dumps(data).encode())


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"window_beats": 0}, "window_beats"),
        ({"window_beats": 10.0}, "window_beats"),
        ({"low_k": 11}, "low_k"),
        ({"low_k": 0}, "low_k"),
        ({"medium_k": 3}, "medium_k"),
        ({"medium_k": 11}, "medium_k"),
        ({"clear_k": 4}, "clear_k"),
        ({"clear_k": -1}, "clear_k"),
        ({"clear_after_beats": 0}, "clear_after_beats"),
        ({"escalate_after_s": -1.0}, "escalate_after_s"),
        ({"escalate_after_s": float("nan")}, "escalate_after_s"),
        ({"cooldown_s": float("inf")}, "cooldown_s"),
        ({"cooldown_s": True}, "cooldown_s"),
    ],
)
def test_settings_validation_names_the_field(
    kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(ConfigError, match=f"alarm setting {field}="):
        AlarmSettings(**kwargs)  # type: ignore[arg-type]


def test_settings_from_mapping() -> None:
    built = AlarmSettings.from_mapping({"low_k": 3, "cooldown_s": 30})
    assert (built.low_k, built.cooldown_s) == (3, 30)
    with pytest.raises(ConfigError, match=r"unknown alarm setting.*cooldown_ms"):
        AlarmSettings.from_mapping({"cooldown_ms": 30})


# Small settings, so that short random runs go through every transition.
SMALL = AlarmSettings(
    window_beats=5,
    low_k=2,
    medium_k=3,
    escalate_after_s=4.0,
    clear_k=0,
    clear_after_beats=3,
    cooldown_s=8.0,
)

runs = st.lists(st.tuples(st.booleans(), st.integers(1, 12)), max_size=30)


def expand(segments: list[tuple[bool, int]]) -> list[bool]:
    return [flag for flag, length in segments for _ in range(length)]


@settings(max_examples=300, deadline=None)
@given(
    segments_a=runs,
    segments_b=runs,
    gaps_s=st.lists(st.floats(0.25, 3.0), min_size=1, max_size=8),
    batch=st.integers(1, 40),
    data=st.data(),
)
def test_crash_restore_and_replay_equals_an_uninterrupted_run(
    segments_a: list[tuple[bool, int]],
    segments_b: list[tuple[bool, int]],
    gaps_s: list[float],
    batch: int,
    data: st.DataObject,
) -> None:
    # Two patients, interleaved, beats at irregular intervals.
    beats: list[Beat] = []
    flags: list[bool] = []
    for patient, marks in (("a", expand(segments_a)), ("b", expand(segments_b))):
        t = T0
        for seq, flag in enumerate(marks):
            t += gaps_s[seq % len(gaps_s)]
            beats.append(Beat(patient, seq, t, ()))
            flags.append(flag)
    order = sorted(range(len(beats)), key=lambda i: (beats[i].produced_at, i))
    beats = [beats[i] for i in order]
    flags = [flags[i] for i in order]

    whole = AlarmPolicy(SMALL)
    uninterrupted: list[AlarmEvent] = []
    for start in range(0, len(beats), batch):
        uninterrupted += whole.apply(
            beats[start : start + batch], flags[start:][:batch]
        )

    # The crash comes after a batch whose snapshots were written; the replay
    # starts at an older committed offset.
    crash_at = data.draw(st.integers(0, len(beats)), label="crash_at")
    replay_from = data.draw(st.integers(0, crash_at), label="replay_from")
    before = AlarmPolicy(SMALL)
    events: list[AlarmEvent] = []
    for start in range(0, crash_at, batch):
        end = min(start + batch, crash_at)
        events += before.apply(beats[start:end], flags[start:end])
    after = AlarmPolicy(SMALL)
    for patient in before.touched_patients():
        saved = before.snapshot(patient)
        assert json.loads(saved) == {
            "v": 1,
            "patient": patient,
            **before.state(patient).to_json(),
        }
        after.restore(patient, saved)
    for start in range(replay_from, len(beats), batch):
        events += after.apply(beats[start : start + batch], flags[start:][:batch])

    assert events == uninterrupted
    assert len({(e.episode_id, e.kind, e.seq) for e in events}) == len(events)
    for patient in ("a", "b"):
        assert after.snapshot(patient) == whole.snapshot(patient)


def test_quiet_patients_need_no_new_snapshot() -> None:
    policy = AlarmPolicy()
    policy.apply(*beats_of("0" * 10))
    assert policy.due_for_saving(["p1", "unknown"]) == ["p1"]
    policy.apply(*beats_of("0" * 10, first_seq=10))
    assert policy.due_for_saving(["p1"]) == []
    policy.apply(*beats_of("1", first_seq=20))
    assert policy.due_for_saving(["p1"]) == ["p1"]


@settings(max_examples=800, deadline=None, derandomize=True)
@given(
    runs=st.lists(
        st.tuples(st.booleans(), st.integers(min_value=1, max_value=30)),
        min_size=1,
        max_size=12,
    ),
    every=st.integers(min_value=1, max_value=20),
    crash_after=st.integers(min_value=0, max_value=40),
)
def test_checkpoints_of_due_snapshots_restore_to_the_uninterrupted_run(
    runs: list[tuple[bool, int]], every: int, crash_after: int
) -> None:
    # Beats go in batches of `every`; each batch ends with a checkpoint that
    # saves only the due snapshots. A crash after some checkpoint restores the
    # latest saved snapshot and replays every beat after that checkpoint.
    # Runs of equal flags reach every phase: raise, escalate, the quiet count
    # down to the end, and the cooldown.
    beats, flags = beats_of([flag for flag, length in runs for _ in range(length)])
    whole = AlarmPolicy()
    expected = whole.apply(beats, flags)

    live = AlarmPolicy()
    store: dict[str, bytes] = {}
    events = []
    checkpoints = list(range(0, len(beats), every))
    crash_at = checkpoints[min(crash_after, len(checkpoints) - 1)]
    for start in checkpoints:
        if start == crash_at:
            break
        events += live.apply(beats[start : start + every], flags[start : start + every])
        store.update((p, live.snapshot(p)) for p in live.due_for_saving(["p1"]))
    restored = AlarmPolicy()
    if "p1" in store:
        restored.restore("p1", store["p1"])
    events += restored.apply(beats[crash_at:], flags[crash_at:])
    assert summary(events) == summary(expected)
    assert [e.episode_id for e in events] == [e.episode_id for e in expected]


def test_events_carry_the_model_version_and_episodes_outlive_a_model_change() -> None:
    policy = AlarmPolicy(model_version="dense-a")
    beats, marks = beats_of(BURST)
    before = policy.apply(beats[:5], marks[:5])
    policy.model_version = "dense-b"
    after = policy.apply(beats[5:], marks[5:])
    assert [e.kind for e in before] == ["raised"]
    assert before[0].model_version == "dense-a"
    assert {e.model_version for e in after} == {"dense-b"}
    # The episode opened under the first model goes on and ends under the second.
    assert {e.episode_id for e in after} == {before[0].episode_id}
    assert after[-1].kind == "ended"
    for event in before + after:
        assert decode_alarm_event(event.encode()) == event
        assert json.loads(event.encode())["model_version"] == event.model_version


def test_patients_without_a_beat_for_forget_after_s_are_idle() -> None:
    policy = AlarmPolicy(AlarmSettings(forget_after_s=600.0))
    policy.apply(*beats_of("0" * 5, patient="gone"))
    policy.apply(*beats_of("0" * 5, patient="stays", first_seq=560))
    assert policy.idle_patients() == []
    # "gone" had its last beat at T0 + 4 s; the newest beat is now T0 + 625 s,
    # a tenth of forget_after_s after the first look.
    policy.apply(*beats_of("0", patient="stays", first_seq=625))
    assert policy.idle_patients() == ["gone"]


def test_a_patient_with_an_open_alarm_is_never_idle() -> None:
    policy = AlarmPolicy(AlarmSettings(forget_after_s=600.0))
    policy.apply(*beats_of("1" * 6, patient="alarm"))
    assert policy.active_alarms() == {"alarm": "medium"}
    policy.apply(*beats_of("0", patient="other", first_seq=5_000))
    assert policy.idle_patients() == []


def test_idle_patients_answers_once_per_tenth_of_forget_after_s() -> None:
    policy = AlarmPolicy(AlarmSettings(forget_after_s=600.0))
    policy.apply(*beats_of("0", patient="a"))
    policy.apply(*beats_of("0", patient="b", first_seq=700))
    assert policy.idle_patients() == ["a"]
    policy.apply(*beats_of("0", patient="b", first_seq=759))
    assert policy.idle_patients() == []
    policy.apply(*beats_of("0", patient="b", first_seq=760))
    assert policy.idle_patients() == ["a"]


def test_forget_after_zero_keeps_every_patient() -> None:
    policy = AlarmPolicy(AlarmSettings(forget_after_s=0.0))
    policy.apply(*beats_of("0", patient="a"))
    policy.apply(*beats_of("0", patient="b", first_seq=100_000))
    assert policy.idle_patients() == []


def test_a_restored_patient_counts_as_seen_at_the_first_look() -> None:
    source = AlarmPolicy()
    source.apply(*beats_of("0" * 3, patient="r"))
    policy = AlarmPolicy(AlarmSettings(forget_after_s=600.0))
    policy.restore("r", source.snapshot("r"))
    policy.apply(*beats_of("0", patient="x", first_seq=10_000))
    assert policy.idle_patients() == []
    policy.apply(*beats_of("0", patient="x", first_seq=10_601))
    assert policy.idle_patients() == ["r"]


def test_forget_after_shorter_than_the_cooldown_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"forget_after_s=30.0: .*cooldown_s"):
        AlarmSettings(forget_after_s=30.0, cooldown_s=60.0)


def test_a_beat_from_a_clock_far_ahead_makes_no_one_idle() -> None:
    policy = AlarmPolicy(AlarmSettings(forget_after_s=600.0), clock=lambda: T0 + 10)
    policy.apply(*beats_of("0" * 5, patient="a"))
    policy.apply(*beats_of("0", patient="skewed", first_seq=86_400))
    assert policy.idle_patients() == []
    policy.apply(*beats_of("0", patient="b", first_seq=250))
    assert policy.idle_patients() == []
