"""The lean upstream client against real sockets that answer well, oddly, or badly."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from proxy import httpclient
from proxy.httpclient import Client, ClientError
from tests.conftest import dead_url

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class RawServer:
    """A TCP server whose answer to each request is a script; it counts connections and requests."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length) if length else b""
                self.requests.append(head + body)
                await self.script(reader, writer, len(self.requests))
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def answer(raw: bytes, *, close: bool = False) -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(raw)
        await writer.drain()
        if close:
            writer.close()

    return script


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_requests_are_framed_as_given_with_host_and_length():
    async with RawServer(answer(OK)) as server:
        client = Client(server.url + "/base")
        headers = [("X-Multi", "1"), ("Content-Type", "application/json"), ("X-Multi", "2")]
        response = await client.request("POST", "/v1/decide?a=1&a=2", headers, b'{"x": 1}', 2.0)
        assert (response.status, response.body) == (200, b"ok")
        port = server.url.rsplit(":", 1)[1]
        assert server.requests[0] == (
            b"POST /base/v1/decide?a=1&a=2 HTTP/1.1\r\nHost: 127.0.0.1:" + port.encode() + b"\r\n"
            b"X-Multi: 1\r\nContent-Type: application/json\r\nX-Multi: 2\r\nContent-Length: 8\r\n\r\n"
            b'{"x": 1}'
        )
        client.close()


async def test_an_absent_body_sends_no_content_length_and_an_empty_one_sends_zero():
    async with RawServer(answer(OK)) as server:
        client = Client(server.url)
        await client.request("GET", "/", [], None, 2.0)
        await client.request("POST", "/", [], b"", 2.0)
        assert b"Content-Length" not in server.requests[0]
        assert server.requests[1].endswith(b"Content-Length: 0\r\n\r\n")
        client.close()


async def test_keep_alive_connections_are_reused():
    async with RawServer(answer(OK)) as server:
        client = Client(server.url)
        for _ in range(5):
            assert (await client.request("POST", "/", [], b"x", 2.0)).body == b"ok"
        assert server.connections == 1 and len(server.requests) == 5
        client.close()


async def test_concurrent_requests_never_mix_up_responses():
    async def echo(reader, writer, n):
        body = str(n).encode()
        await asyncio.sleep(0.001 * (n % 7))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    async with RawServer(echo) as server:
        client = Client(server.url)

        async def one(i: int) -> tuple[int, int]:
            response = await client.request("POST", f"/{i}", [], str(i).encode(), 5.0)
            return i, int(response.body)  # the server answers with the number of the request it read

        for i, answered in await asyncio.gather(*(one(i) for i in range(60))):
            # the answer this caller got is to the request this caller sent
            assert server.requests[answered - 1].startswith(f"POST /{i} ".encode())
        client.close()


async def test_chunked_and_close_delimited_bodies_are_read_whole():
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
    async with RawServer(answer(chunked)) as server:
        client = Client(server.url)
        assert (await client.request("GET", "/", [], None, 2.0)).body == b"abcdefg"
        client.close()
    close_delimited = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"
    async with RawServer(answer(close_delimited, close=True)) as server:
        client = Client(server.url)
        assert (await client.request("GET", "/", [], None, 2.0)).body == b"until the end"
        assert (await client.request("GET", "/", [], None, 2.0)).body == b"until the end"
        assert server.connections == 2  # never reused
        client.close()


async def test_status_reason_repeated_headers_and_raw_bytes_pass_through():
    raw = (b"HTTP/1.1 418 I Am A Teapot\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-Thing: caf\xc3\xa9\r\n"
           b"Content-Length: 4\r\n\r\n\xff\x00\xfe\x01")  # fmt: skip
    async with RawServer(answer(raw)) as server:
        client = Client(server.url)
        response = await client.request("GET", "/", [], None, 2.0)
        assert (response.status, response.reason, response.body) == (418, "I Am A Teapot", b"\xff\x00\xfe\x01")
        assert response.headers.getall("Set-Cookie") == ["a=1", "b=2"] and response.headers["X-Thing"] == "café"
        client.close()


async def test_informational_responses_are_skipped():
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nz"
    async with RawServer(answer(raw)) as server:
        client = Client(server.url)
        response = await client.request("POST", "/", [], b"x", 2.0)
        assert (response.status, response.body) == (201, b"z")
        client.close()


async def test_no_body_statuses_and_http_1_0():
    async with RawServer(answer(b"HTTP/1.1 204 No Content\r\n\r\n")) as server:
        client = Client(server.url)
        assert (await client.request("DELETE", "/", [], None, 2.0)).status == 204
        assert (await client.request("DELETE", "/", [], None, 2.0)).status == 204
        assert server.connections == 1
        client.close()
    async with RawServer(answer(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")) as server:
        client = Client(server.url)
        await client.request("GET", "/", [], None, 2.0)
        await client.request("GET", "/", [], None, 2.0)
        assert server.connections == 2  # HTTP/1.0 without keep-alive: not reused
        client.close()


def second_closes_unanswered() -> Script:
    async def script(reader, writer, n):
        if n == 2:  # the kept-alive connection is gone when the next request arrives
            writer.close()
            return
        writer.write(OK)

    return script


async def test_an_idempotent_request_on_a_connection_closed_unanswered_is_retried_once():
    async with RawServer(second_closes_unanswered()) as server:
        client = Client(server.url)
        assert (await client.request("GET", "/", [], None, 2.0)).body == b"ok"
        assert (await client.request("GET", "/", [], None, 2.0)).body == b"ok"
        assert len(server.requests) == 3 and server.connections == 2  # sent again, on a new connection
        client.close()


async def test_a_post_is_never_sent_twice():
    async with RawServer(second_closes_unanswered()) as server:
        client = Client(server.url)
        assert (await client.request("POST", "/", [], b"1", 2.0)).body == b"ok"
        with pytest.raises(ClientError, match="closed a kept-alive connection before answering"):
            await client.request("POST", "/", [], b"2", 2.0)
        assert len(server.requests) == 2
        client.close()


async def test_a_connection_that_sent_an_informational_response_is_not_retried():
    async with RawServer(answer(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n", close=True)) as server:
        client = Client(server.url)
        with pytest.raises(ClientError, match="in the middle of the response"):
            await client.request("GET", "/", [], None, 2.0)
        assert len(server.requests) == 1
        client.close()


async def test_idle_connections_are_not_reused_past_their_age(monkeypatch):
    monkeypatch.setattr(httpclient, "MAX_IDLE_S", 0.05)
    async with RawServer(answer(OK)) as server:
        client = Client(server.url)
        await client.request("POST", "/", [], b"1", 2.0)
        await client.request("POST", "/", [], b"2", 2.0)
        await asyncio.sleep(0.1)
        await client.request("POST", "/", [], b"3", 2.0)
        assert server.connections == 2
        client.close()


async def test_oversized_response_headers_are_refused(monkeypatch):
    monkeypatch.setattr(httpclient, "MAX_HEADER_BYTES", 200)
    many = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"y" * 40) for i in range(10))
    async with RawServer(answer(b"HTTP/1.1 200 OK\r\n" + many + b"Content-Length: 0\r\n\r\n")) as server:
        client = Client(server.url)
        with pytest.raises(ClientError, match="headers larger than 200 bytes"):
            await client.request("GET", "/", [], None, 2.0)
        client.close()


async def test_host_names_are_resolved_and_cached():
    async with RawServer(answer(OK)) as server:
        client = Client(server.url.replace("127.0.0.1", "localhost"))
        assert (await client.request("GET", "/", [], None, 2.0)).body == b"ok"
        assert client._dns is not None and any(address == "127.0.0.1" for _, address in client._dns[1])
        assert server.requests[0].split(b"\r\n")[1].startswith(b"Host: localhost:")
        client.close()
    with pytest.raises(ClientError, match="cannot connect: "):
        await Client("http://no-such-host.invalid:80").request("GET", "/", [], None, 2.0)


async def test_a_fresh_connection_closed_unanswered_is_not_retried():
    async with RawServer(answer(b"", close=True)) as server:
        client = Client(server.url)
        with pytest.raises(ClientError, match="closed before the response"):
            await client.request("POST", "/", [], b"1", 2.0)
        assert len(server.requests) == 1
        client.close()


async def test_a_connection_broken_mid_response_is_an_error_and_not_retried():
    async with RawServer(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", close=True)) as server:
        client = Client(server.url)
        with pytest.raises(ClientError, match="in the middle of the response"):
            await client.request("POST", "/", [], b"x", 2.0)
        assert len(server.requests) == 1
        client.close()


async def test_garbage_is_a_bad_response():
    async with RawServer(answer(b"<html>not http</html>\r\n\r\n")) as server:
        client = Client(server.url)
        with pytest.raises(ClientError, match="bad response"):
            await client.request("GET", "/", [], None, 2.0)
        client.close()


async def test_a_hung_upstream_times_out_and_its_connection_is_dropped():
    release = asyncio.Event()

    async def hang(reader, writer, n):
        if n == 1:
            await release.wait()
        writer.write(OK)

    async with RawServer(hang) as server:
        client = Client(server.url)
        with pytest.raises(TimeoutError):
            await client.request("GET", "/", [], None, 0.1)
        release.set()
        assert (await client.request("GET", "/", [], None, 2.0)).body == b"ok"
        assert server.connections == 2  # the timed-out connection was not reused
        client.close()


async def test_a_response_over_the_size_limit_is_refused(monkeypatch):
    monkeypatch.setattr(httpclient, "MAX_RESPONSE_BYTES", 100)
    async with RawServer(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n" + b"x" * 500)) as server:
        client = Client(server.url)
        with pytest.raises(ClientError, match="larger than 100 bytes"):
            await client.request("GET", "/", [], None, 2.0)
        client.close()


async def test_refused_connections_and_line_breaks_in_headers_are_errors():
    client = Client(dead_url())
    with pytest.raises(ClientError, match=r"^cannot connect: connection refused$"):
        await client.request("GET", "/", [], None, 2.0)
    with pytest.raises(ClientError, match="line break"):
        client.head("GET", "/", [("X-Evil", "a\r\nX-Injected: 1")], None)
