"""app.client.Client's lean transport (http.client, a keep-alive connection per thread)
against real local servers speaking raw HTTP/1.1, scripted to misbehave as a real API,
load balancer or proxy can: drop a kept-alive connection, hang up on a request, answer
an error page, serve TLS, stand in as a proxy."""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.client import BabelqError, Client

JOB = {"id": 7, "status": "queued"}
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY",
              "http_proxy", "https_proxy", "all_proxy", "no_proxy")


def answer(status: int = 200, body: bytes = json.dumps(JOB).encode(), *,
           content_type: str = "application/json", close: bool = False) -> bytes:
    """A whole HTTP/1.1 answer."""
    reason = {200: "OK", 204: "No Content", 502: "Bad Gateway"}[status]
    head = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}", *(["Connection: close"] if close else [])]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


#: What to do with the n-th request (from 0) on the c-th connection (from 0): answer these
#: bytes; None: hang up without answering; (bytes, True): answer, then hang up.
Script = Callable[[int, int, bytes], bytes | tuple[bytes, bool] | None]


@dataclass
class Request:
    connection: int
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class RawServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 (TLS with `tls`), run by a script; it keeps
    every request it read and notes each connection the client closed."""

    script: Script
    tls: ssl.SSLContext | None = None
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    closed_by_client: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            number, self.connections = self.connections, self.connections + 1
            threading.Thread(target=self._serve, args=(sock, number), daemon=True).start()

    def _serve(self, sock: socket.socket, number: int) -> None:
        try:
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_side=True)
            reader = sock.makefile("rb")
            for n in range(1000):
                request = self._read(reader, number)
                if request is None:
                    self.closed_by_client.add(number)
                    return
                self.requests.append(request)
                reply = self.script(number, n, request.body)
                if reply is None:
                    return
                hang_up = isinstance(reply, tuple)
                sock.sendall(reply[0] if isinstance(reply, tuple) else reply)
                if hang_up:
                    return
        except OSError:
            return
        finally:
            sock.close()

    @staticmethod
    def _read(reader: IO[bytes], number: int) -> Request | None:
        line = reader.readline()
        if not line:
            return None
        method, target, _ = line.decode().split(" ", 2)
        headers = {}
        while (header := reader.readline()) not in (b"\r\n", b""):
            name, _, value = header.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = reader.read(int(headers.get("content-length", 0)))
        return Request(number, method, target, headers, body)


@pytest.fixture
def serve() -> Iterator[Callable[..., RawServer]]:
    started: list[RawServer] = []

    def start(script: Script, tls: ssl.SSLContext | None = None) -> RawServer:
        started.append(RawServer(script, tls))
        return started[-1]

    yield start
    for server in started:
        server.close()


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy of the developer's environment: each test sets its own."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


def until(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def always(reply: bytes) -> Script:
    return lambda c, n, body: reply


# Requests as the API receives them ----------------------------------------------------


def test_a_path_prefix_the_query_and_the_headers_reach_the_server(
        serve: Callable[..., RawServer]) -> None:
    server = serve(always(answer()))
    with Client(f"{server.url()}/prefix/", "k-123") as bq:
        assert bq.get(7, wait=1.5) == JOB
        assert bq.submit("encode", {"text": "héllo"}, priority="high") == JOB
        bq.cancel(7)
    get, post, cancel = server.requests
    assert (get.method, get.target) == ("GET", "/prefix/v1/jobs/7?wait=1.500")
    assert get.headers["authorization"] == "Bearer k-123"
    assert get.headers["user-agent"].startswith("babelq-client/")
    assert get.headers["accept"] == "application/json"
    assert "content-type" not in get.headers and get.body == b""
    assert (post.method, post.target) == ("POST", "/prefix/v1/jobs")
    assert post.headers["content-type"] == "application/json"
    assert json.loads(post.body) == {"kind": "encode", "params": {"text": "héllo"},
                                     "priority": "high"}
    assert (cancel.method, cancel.target, cancel.body) == ("POST", "/prefix/v1/jobs/7/cancel", b"")
    assert server.connections == 1  # all three on one kept-alive connection


def test_an_error_page_that_is_not_json_keeps_its_status_and_text(
        serve: Callable[..., RawServer]) -> None:
    server = serve(always(answer(502, b"Bad Gateway\n", content_type="text/plain")))
    with Client(server.url(), "k") as bq, pytest.raises(BabelqError) as caught:
        bq.get(7)
    assert (caught.value.status, caught.value.code, caught.value.message) == (
        502, "http_error", "Bad Gateway")


def test_an_api_that_cannot_be_reached_is_status_0_unreachable() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{unused.getsockname()[1]}"  # bound, not listening
        with Client(url, "k", timeout=2) as bq, pytest.raises(BabelqError) as caught:
            bq.submit("encode", {"text": "x"})
    assert (caught.value.status, caught.value.code) == (0, "unreachable")
    assert caught.value.message.startswith(f"cannot reach {url}: ")


def test_an_answer_that_never_comes_times_out_as_unreachable(
        serve: Callable[..., RawServer]) -> None:
    def slow(c: int, n: int, body: bytes) -> bytes:
        time.sleep(3)
        return answer()

    server = serve(slow)
    started = time.monotonic()
    with Client(server.url(), "k", timeout=0.5) as bq, pytest.raises(BabelqError) as caught:
        bq.get(7)
    assert (caught.value.status, caught.value.code) == (0, "unreachable")
    assert "timed out" in caught.value.message and time.monotonic() - started < 2.5


# Kept-alive connections the server closed ---------------------------------------------


def test_a_connection_the_server_closed_while_idle_is_replaced_before_a_post(
        serve: Callable[..., RawServer]) -> None:
    """As uvicorn does after 5 s idle: the next submit goes out on a new connection (a
    POST is never sent again, so it must not go out on the dead one)."""
    server = serve(lambda c, n, body: (answer(), True))  # answer, then close
    with Client(server.url(), "k") as bq:
        assert bq.get(7) == JOB
        time.sleep(0.2)  # the server's FIN has arrived
        assert bq.submit("encode", {"text": "after idle"}) == JOB
    assert [(r.connection, r.method) for r in server.requests] == [(0, "GET"), (1, "POST")]


def test_an_answer_with_connection_close_is_followed_by_a_new_connection(
        serve: Callable[..., RawServer]) -> None:
    server = serve(lambda c, n, body: answer(close=True))
    with Client(server.url(), "k") as bq:
        assert [bq.get(7), bq.submit("encode", {"text": "x"}), bq.get(7)] == [JOB] * 3
    assert [r.connection for r in server.requests] == [0, 1, 2]


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_a_read_or_delete_on_a_connection_dropped_under_it_goes_out_again_on_a_new_one(
        serve: Callable[..., RawServer], method: str) -> None:
    """The server hangs up on the second request of the kept-alive connection, without
    answering (its idle close racing the request): GET and DELETE are sent again, once."""
    reply = answer() if method == "GET" else answer(204, b"")
    server = serve(lambda c, n, body: None if (c, n) == (0, 1) else reply)
    with Client(server.url(), "k") as bq:
        bq.get(7)
        if method == "GET":
            assert bq.get(7) == JOB
        else:
            bq.delete_webhook(3)  # raises unless a 204 came
    assert [(r.connection, r.method) for r in server.requests] == [
        (0, "GET"), (0, method), (1, method)]


def test_a_post_on_a_kept_alive_connection_dropped_under_it_is_not_sent_again(
        serve: Callable[..., RawServer]) -> None:
    """The job may be stored: sending it again could make two. Raised as unreachable."""
    server = serve(lambda c, n, body: None if (c, n) == (0, 1) else answer())
    with Client(server.url(), "k") as bq:
        bq.get(7)
        with pytest.raises(BabelqError) as caught:
            bq.submit("encode", {"text": "once"})
        assert (caught.value.status, caught.value.code) == (0, "unreachable")
        time.sleep(0.2)
        assert [(r.connection, r.method) for r in server.requests] == [(0, "GET"), (0, "POST")]
        assert server.connections == 1
        assert bq.get(7) == JOB  # the client goes on, on a new connection


def test_a_post_the_server_hangs_up_on_is_sent_once(serve: Callable[..., RawServer]) -> None:
    server = serve(lambda c, n, body: None)  # reads the request, closes without answering
    with Client(server.url(), "k") as bq, pytest.raises(BabelqError) as caught:
        bq.submit("encode", {"text": "once"})
    assert caught.value.status == 0 and caught.value.code == "unreachable"
    time.sleep(0.2)
    assert [r.method for r in server.requests] == ["POST"] and server.connections == 1


# Threads --------------------------------------------------------------------------------


def test_each_thread_has_its_own_connection_and_close_closes_them_all(
        serve: Callable[..., RawServer]) -> None:
    server = serve(lambda c, n, body: answer(body=json.dumps({"id": c, "status": "queued"})
                                             .encode()))
    bq = Client(server.url(), "k")
    together = threading.Barrier(4)

    def one(_: int) -> int:
        together.wait(5)  # four threads at once: four connections
        first = bq.get(1)["id"]
        assert [bq.get(1)["id"] for _ in range(5)] == [first] * 5  # its own, kept alive
        return int(first)

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert sorted(pool.map(one, range(4))) == [0, 1, 2, 3]
        assert server.closed_by_client == set()  # the pool's threads live on
        bq.close()
        assert until(lambda: server.closed_by_client == {0, 1, 2, 3})
    with pytest.raises(RuntimeError):
        bq.get(1)


def test_a_thread_that_ends_leaves_no_connection_open(serve: Callable[..., RawServer]) -> None:
    server = serve(always(answer()))
    with Client(server.url(), "k") as bq:
        worker = threading.Thread(target=bq.get, args=(7,))
        worker.start()
        worker.join()
        assert until(lambda: server.closed_by_client == {0})
        assert bq.get(7) == JOB


# TLS --------------------------------------------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key: (cert, key) PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.fixture
def tls_server(serve: Callable[..., RawServer], tmp_path: Path) -> tuple[RawServer, Path]:
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    # Answers, then closes the connection: the client must see the close and reconnect.
    return serve(lambda c, n, body: (answer(), True) if c == 0 else answer(), context), cert


def test_https_trusts_what_httpx_trusts_and_checks_the_certificate(
        tls_server: tuple[RawServer, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx's default trust: certifi's bundle, which does not hold a self-signed cert..."""
    server, _ = tls_server
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with Client(f"{server.url('https')}/api", "k") as bq, pytest.raises(BabelqError) as caught:
        bq.get(7)
    assert caught.value.code == "unreachable" and "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
    assert server.requests == []


def test_https_with_ssl_cert_file_serves_requests_over_kept_alive_tls(
        tls_server: tuple[RawServer, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """... and SSL_CERT_FILE, as httpx honours it: the certificate's own file."""
    server, cert = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    with Client(f"{server.url('https')}/api", "k") as bq:
        assert bq.get(7) == JOB
        time.sleep(0.2)  # the server has closed that connection
        assert bq.submit("encode", {"text": "tls"}) == JOB
        assert bq.get(7) == JOB
    assert [(r.connection, r.method, r.target) for r in server.requests] == [
        (0, "GET", "/api/v1/jobs/7"), (1, "POST", "/api/v1/jobs"), (1, "GET", "/api/v1/jobs/7")]


# Proxies --------------------------------------------------------------------------------


def test_a_proxy_in_the_environment_carries_every_call(
        serve: Callable[..., RawServer], monkeypatch: pytest.MonkeyPatch) -> None:
    """http.client knows no proxies: with HTTP_PROXY set, httpx carries the small calls."""
    proxy = serve(always(answer()))
    monkeypatch.setenv("HTTP_PROXY", proxy.url())
    with Client("http://api.invalid:8000/prefix", "k") as bq:
        assert bq.get(7) == JOB
        assert bq.submit("encode", {"text": "via proxy"}) == JOB
    assert [(r.method, r.target) for r in proxy.requests] == [
        ("GET", "http://api.invalid:8000/prefix/v1/jobs/7"),
        ("POST", "http://api.invalid:8000/prefix/v1/jobs")]


def test_no_proxy_keeps_the_api_direct(serve: Callable[..., RawServer],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    proxy, api = serve(always(answer())), serve(always(answer()))
    monkeypatch.setenv("HTTP_PROXY", proxy.url())
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with Client(api.url(), "k") as bq:
        assert bq.get(7) == JOB
    assert proxy.requests == [] and [r.target for r in api.requests] == ["/v1/jobs/7"]
