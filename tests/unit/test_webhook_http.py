"""The webhook sender's HTTP client against a real local server speaking raw HTTP/1.1."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

import pytest

from workers.webhook_http import Client, Destination, Reply, destination, request_target

Answer = Callable[[bytes], bytes | None]


class Server:
    """Answers each request (head and body as received) with what `answer` returns
    (None: never answer), and keeps what it saw."""

    def __init__(self, answer: Answer, close_after: bool = False) -> None:
        self.answer = answer
        self.close_after = close_after
        self.requests: list[bytes] = []
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                reply = self.answer(request)
                if reply is None:
                    await asyncio.sleep(30)
                    return
                writer.write(reply)
                await writer.drain()
                if self.close_after or b"connection: close" in reply.lower():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def run(answer: Answer, scenario: Callable[[Client, Destination], Awaitable[None]],
        timeout: float = 5.0, close_after: bool = False) -> Server:
    """Run scenario with a client and a destination named hooks.example.test that is
    connected at 127.0.0.1 (a name that resolves nowhere: the client must not resolve it)."""
    server = Server(answer, close_after)

    async def main() -> None:
        listening = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        port = listening.sockets[0].getsockname()[1]
        client = Client(timeout, 1024)
        try:
            await scenario(client, destination("http", "hooks.example.test", port,
                                               "127.0.0.1", True))
        finally:
            client.close()
            listening.close()

    asyncio.run(main())
    return server


def test_connects_to_the_checked_address_and_names_the_host() -> None:
    """DNS rebinding is defeated by connecting where the sender checked, never resolving."""
    got: list[Reply] = []

    async def scenario(client: Client, to: Destination) -> None:
        got.append(await client.post(to, request_target("/hook", "a=1"),
                                     [("webhook-id", "msg_1")], b'{"x":1}'))

    server = run(lambda _: b"HTTP/1.1 204 No Content\r\n\r\n", scenario)
    assert got[0].status == 204
    head = server.requests[0].decode()
    assert head.startswith("POST /hook?a=1 HTTP/1.1\r\n")
    assert "\r\nhost: hooks.example.test:" in head
    assert "webhook-id: msg_1" in head and head.endswith('{"x":1}')


def test_a_redirect_is_an_answer_not_followed() -> None:
    got: list[Reply] = []

    async def scenario(client: Client, to: Destination) -> None:
        got.append(await client.post(to, "/hook", [], b"{}"))

    server = run(lambda _: b"HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:1/x\r\n"
                           b"content-length: 0\r\n\r\n", scenario)
    assert got[0].status == 302
    assert len(server.requests) == 1


def test_only_the_first_kilobyte_of_a_long_answer_is_kept() -> None:
    got: list[Reply] = []

    async def scenario(client: Client, to: Destination) -> None:
        got.append(await client.post(to, "/hook", [], b"{}"))
        got.append(await client.post(to, "/hook", [], b"{}"))

    body = b"x" * 5_000_000
    server = run(lambda _: b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body),
                 scenario)
    assert [r.head for r in got] == [b"x" * 1024] * 2
    # The rest was never read: the connection was dropped, not drained and reused.
    assert server.connections == 2


def test_chunked_and_close_delimited_answers_and_keep_alive() -> None:
    got: list[Reply] = []
    answers = iter([b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                    b"5\r\nhello\r\n0\r\n\r\n",
                    b"HTTP/1.1 500 Oops\r\ncontent-length: 4\r\n\r\nbad!",
                    b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end"])

    async def scenario(client: Client, to: Destination) -> None:
        for _ in range(3):
            got.append(await client.post(to, "/hook", [], b"{}"))

    server = run(lambda _: next(answers), scenario)
    assert [(r.status, r.head) for r in got] == [
        (200, b"hello"), (500, b"bad!"), (200, b"until the end")]
    assert server.connections == 1


def test_a_receiver_that_never_answers_times_out() -> None:
    async def scenario(client: Client, to: Destination) -> None:
        with pytest.raises(TimeoutError):
            await client.post(to, "/hook", [], b"{}")

    run(lambda _: None, scenario, timeout=0.3)


def test_unsafe_characters_of_a_target_are_encoded() -> None:
    assert request_target("/a b\r\nx", "") == "/a%20b%0D%0Ax"
    assert request_target("", "q=é") == "/?q=%C3%A9"


def test_a_kept_connection_the_receiver_closed_is_not_reused() -> None:
    """Receivers close idle connections (uvicorn after 5 s): the next delivery must not
    be written into a closed connection and fail."""
    got: list[Reply] = []

    async def scenario(client: Client, to: Destination) -> None:
        got.append(await client.post(to, "/hook", [], b"{}"))
        await asyncio.sleep(0.2)  # the receiver's close arrives
        got.append(await client.post(to, "/hook", [], b"{}"))

    server = run(lambda _: b"HTTP/1.1 204 No Content\r\n\r\n", scenario, close_after=True)
    assert [r.status for r in got] == [204, 204]
    assert server.connections == 2


def test_a_delivery_whose_lease_is_nearly_over_is_not_sent() -> None:
    """Claimed ahead behind slow receivers, it would be sent while another sender may
    claim it again after the lease: it is left for that claim instead."""
    from app.webhooks.deliveries import Due, Target
    from workers.webhooks import Sender

    server = Server(lambda _: b"HTTP/1.1 204 No Content\r\n\r\n")

    async def main() -> Sender:
        listening = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        port = listening.sockets[0].getsockname()[1]
        sender = Sender()
        sender.settings = sender.settings.model_copy(update={"webhook_allow_private": True})
        target = Target(f"http://127.0.0.1:{port}/hook", "whsec_" + "A" * 32)
        now = time.monotonic()
        for ident, send_before in ((1, now - 1), (2, now + 60)):
            due = Due(ident, 1, "job.succeeded", 0, b"{}", None)
            sender.claimed.put_nowait((due, target, send_before))
        stop = threading.Event()
        stop.set()
        sender.senders_left = 1
        await sender.send_loop(stop)
        listening.close()
        return sender

    sender = asyncio.run(main())
    assert sender.let_go == 1
    sent = [sender.outcomes.get_nowait() for _ in range(sender.outcomes.qsize())]
    assert [(a.delivery.id, a.status_code) for a in sent] == [(2, 204)]
    assert len(server.requests) == 1
