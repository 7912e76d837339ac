"""The explorer's server under slow and many clients, on loopback with bounded clients."""

import socket

import pytest
from tests.conftest import serving

from capsnet.errors import ConfigError
from capsnet.models import create_model
from capsnet.tools.explore import ServerLimits, create_app, listen, make_server

LIMITS = ServerLimits(header_timeout=0.5, keep_alive=1, max_connections=4)
# Far beyond any limit under test: a client's reads fail only if the server never answers
# (they guard against a hang; no test measures how fast the server is).
GUARD = 60


def _serve(limits: ServerLimits, body_timeout: float):
    model = create_model("capsnet-small", conv1_channels=4, primary_types=2, decoder_hidden=(8,))
    server = make_server(create_app(model.eval(), body_timeout=body_timeout), limits)
    sock = listen("127.0.0.1", 0)
    with serving(server, sock):
        yield sock.getsockname()[:2]


@pytest.fixture(scope="module")
def address():
    yield from _serve(LIMITS, body_timeout=0.5)


@pytest.fixture(scope="module")
def patient_address():
    """A server whose clients never time out (within GUARD): its connections stay open."""
    yield from _serve(
        ServerLimits(header_timeout=GUARD, keep_alive=GUARD, max_connections=4), body_timeout=GUARD
    )


def _connect(address, data: bytes) -> socket.socket:
    client = socket.create_connection(address, timeout=GUARD)
    client.sendall(data)
    return client


def _reply(client: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (b"" if it sent nothing)."""
    chunks = []
    while chunk := client.recv(65536):
        chunks.append(chunk)
    client.close()
    return b"".join(chunks)


HEAD = b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


def test_a_client_that_never_finishes_its_headers_is_disconnected(address):
    clients = [_connect(address, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n") for _ in range(3)]
    assert [_reply(c) for c in clients] == [b""] * 3  # closed by the server, unanswered


def test_a_body_that_never_arrives_gets_408(address):
    client = _connect(address, HEAD + b'Content-Length: 100\r\n\r\n{"pixels": [')
    reply = _reply(client)
    assert reply.startswith(b"HTTP/1.1 408") and b"not received within 0.5 s" in reply


def test_a_request_that_makes_max_connections_gets_503(patient_address):
    # the server accepts connections in the order they were made, so the three stalled ones
    # are open (their bodies never come) when the fourth one's request arrives
    stalled = [_connect(patient_address, HEAD + b"Content-Length: 100\r\n\r\n") for _ in range(3)]
    extra = _connect(patient_address, b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    reply = extra.recv(65536)
    assert reply.startswith(b"HTTP/1.1 503"), reply
    extra.close()
    for c in stalled:
        c.close()


@pytest.mark.parametrize("port", [-5, 65536, 99999])
def test_ports_out_of_range_are_refused(port):
    with pytest.raises(ConfigError, match=f"port must be in 0..65535, got {port}"):
        listen("127.0.0.1", port)
