"""The SASL login check without a broker: when it stays silent.

Against a real broker (refused and accepted logins) it is tested in
tests/integration/test_security.py.
"""

from __future__ import annotations

import socket
import time

from beatmon.kafka_login import _servers, check_login

SCRAM = {
    "security_protocol": "SASL_PLAINTEXT",
    "sasl_mechanism": "SCRAM-SHA-256",
    "sasl_plain_username": "beatmon",
    "sasl_plain_password": "secret",
}


def test_without_sasl_nothing_is_checked() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.2)
        port = listener.getsockname()[1]
        check_login(f"127.0.0.1:{port}", {"security_protocol": "PLAINTEXT"})
        try:
            listener.accept()
        except TimeoutError:
            return
        raise AssertionError("the check connected although there is no login")


def test_a_broker_that_does_not_answer_is_left_to_the_clients() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    started = time.monotonic()
    check_login(f"127.0.0.1:{closed_port}", SCRAM, timeout_s=1.0)
    assert time.monotonic() - started < 1.0


def test_bootstrap_servers_are_split_into_hosts_and_ports() -> None:
    assert list(_servers("a:9092, b.example:9093,[::1]:9094,junk")) == [
        ("a", 9092),
        ("b.example", 9093),
        ("::1", 9094),
    ]


def test_a_broker_that_accepts_but_stays_silent_costs_only_the_timeout() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        started = time.monotonic()
        check_login(f"127.0.0.1:{port}", SCRAM, timeout_s=0.5)
        took_s = time.monotonic() - started
    assert 0.5 <= took_s < 2.0
