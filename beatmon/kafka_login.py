"""A quick check that the Kafka brokers accept this client's SASL login.

A broker that refuses a login answers with an error and closes the
connection. kafka-python 3.0 drops an answer that arrives together with the
close, retries the login until its bootstrap timeout, and then reports only
that it could not bootstrap, which reads like a broker that is down.
:func:`check_login` logs in once over a plain blocking socket before the real
clients start, reads the broker's answer, and turns a refusal into a
:class:`~beatmon.errors.TransportError` that says so within seconds.

The check speaks the two SASL requests with kafka-python's own protocol
classes and SASL mechanisms, so it sends what the clients would send.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from beatmon.errors import TransportError

logger = logging.getLogger(__name__)

# Long enough for a loaded broker to answer a login, short enough that a wrong
# password stops the start within a few seconds.
LOGIN_CHECK_S = 3.0
SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")
CLIENT_ID = "beatmon-login-check"


def check_login(
    bootstrap_servers: str,
    client_options: Mapping[str, Any],
    timeout_s: float = LOGIN_CHECK_S,
) -> None:
    """Raise TransportError when the brokers refuse the SASL login of the options.

    ``client_options`` are the kafka-python security keyword arguments (see
    ``KafkaSettings.client_options``); without a SASL protocol there is no
    login and nothing is checked. The first bootstrap server that answers
    within ``timeout_s`` seconds decides. When none answers, the check says
    nothing and leaves it to the clients and their own connect timeouts.
    """
    from kafka.errors import KafkaError

    if client_options.get("security_protocol", "PLAINTEXT") not in SASL_PROTOCOLS:
        return
    for host, port in _servers(bootstrap_servers):
        try:
            refusal = _try_login(host, port, client_options, timeout_s)
        except (OSError, KafkaError, ValueError) as exc:
            logger.debug("login check: no answer host=%s port=%d: %s", host, port, exc)
            continue
        if refusal is None:
            logger.debug("login check: accepted host=%s port=%d", host, port)
            return
        raise TransportError(
            f"Kafka at {host}:{port} refused the login of user "
            f"{client_options.get('sasl_plain_username')!r} "
            f"({client_options.get('security_protocol')}, "
            f"{client_options.get('sasl_mechanism')}): {refusal}"
        )


def _servers(bootstrap_servers: str) -> Iterator[tuple[str, int]]:
    for entry in bootstrap_servers.split(","):
        host, _, port = entry.strip().rpartition(":")
        if host and port.isdigit():
            yield host.strip("[]"), int(port)


def _try_login(
    host: str, port: int, options: Mapping[str, Any], timeout_s: float
) -> str | None:
    """None when the broker accepts the login, else why not and what to do."""
    from kafka.errors import UnsupportedSaslMechanismError, for_code
    from kafka.net.sasl import get_sasl_mechanism
    from kafka.protocol.parser import KafkaProtocol
    from kafka.protocol.sasl import SaslAuthenticateRequest, SaslHandshakeRequest

    name = str(options.get("sasl_mechanism"))
    with _connect(host, port, options, timeout_s) as sock:
        parser = KafkaProtocol(client_id=CLIENT_ID)
        handshake = _round_trip(
            sock, parser, SaslHandshakeRequest(mechanism=name, version=1)
        )
        error = for_code(handshake.error_code)
        if error is UnsupportedSaslMechanismError:
            offered = ", ".join(handshake.mechanisms) or "none"
            return (
                f"the broker does not offer {name}; set kafka.sasl_mechanism to "
                f"one it offers: {offered}"
            )
        if handshake.error_code:
            return (
                f"the broker answered the SASL handshake with {error.__name__}; "
                "this port may not be a SASL listener (check "
                "kafka.bootstrap_servers and kafka.security_protocol)"
            )

        mechanism = get_sasl_mechanism(name)(host=host, **options)
        while not mechanism.is_done():
            request = SaslAuthenticateRequest(
                auth_bytes=mechanism.auth_bytes(), version=1
            )
            answer = _round_trip(sock, parser, request)
            if answer.error_code:
                reason = answer.error_message or for_code(answer.error_code).__name__
                return (
                    f"{reason}; check kafka.sasl_username and the password in "
                    "BEATMON_KAFKA__SASL_PASSWORD"
                )
            mechanism.receive(answer.auth_bytes)
        if not mechanism.is_authenticated():
            return "the broker did not confirm the login"
    return None


@contextmanager
def _connect(
    host: str, port: int, options: Mapping[str, Any], timeout_s: float
) -> Iterator[socket.socket]:
    sock = socket.create_connection((host, port), timeout=timeout_s)
    try:
        if options.get("security_protocol") == "SASL_SSL":
            sock = _tls_context(options).wrap_socket(sock, server_hostname=host)
        yield sock
    finally:
        sock.close()


def _tls_context(options: Mapping[str, Any]) -> ssl.SSLContext:
    """The TLS context kafka-python builds from the same options."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = bool(options.get("ssl_check_hostname", True))
    if options.get("ssl_cafile"):
        context.load_verify_locations(options["ssl_cafile"])
    else:
        context.load_default_certs()
    if options.get("ssl_certfile"):
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
    return context


def _round_trip(sock: socket.socket, parser: Any, request: Any) -> Any:
    """Send one request and return the broker's answer to it."""
    parser.send_request(request)
    sock.sendall(parser.send_bytes())
    while True:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("the broker closed the connection without answering")
        for _, response in parser.receive_bytes(data):
            return response
