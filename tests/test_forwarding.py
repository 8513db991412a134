"""Forwarding in shadow stage: the client's answer is the primary's, byte for byte (SPEC §2)."""

from __future__ import annotations

import asyncio
import gzip

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.conftest import dead_url, route_config

ANY_PATH = {"match": {"path_prefix": "/"}}


def client() -> aiohttp.ClientSession:
    # auto_decompress off: the test must see the bytes the proxy sent
    return aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=("User-Agent", "Accept-Encoding"))


async def primary_with(status: int, body: bytes, headers: list[tuple[str, str]]):
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.Response(status=status, body=body)
        for name, value in headers:
            response.headers.add(name, value)
        return response

    return handler


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PURGE"])
async def test_client_gets_primary_status_body_and_headers_for_every_method(upstreams, make_proxy, method):
    body = b"\xff\xfe not utf-8 \x00 bytes"
    headers = [("X-Thing", "1"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Cache-Control", "no-store")]
    primary = await upstreams(await primary_with(207, body, headers))
    model = await upstreams()
    proxy = await make_proxy([route_config("r", primary.url, model.url, **ANY_PATH)])
    async with client() as s, s.request(method, proxy.url + "/anything", data=b"x") as r:
        got = await r.read()
        assert r.status == 207
        assert got == body
        assert r.headers.getall("Set-Cookie") == ["a=1", "b=2"]
        assert r.headers["X-Thing"] == "1" and r.headers["Cache-Control"] == "no-store"
        assert r.headers["X-Served-By"] == "primary"
        assert r.headers["X-Request-Id"]


async def test_request_reaches_primary_and_model_intact(upstreams, make_proxy):
    primary, model = await upstreams(), await upstreams()
    proxy = await make_proxy([route_config("r", primary.url, model.url)])
    body = b"\x80\x81 raw \xff"
    headers = [
        ("X-Multi", "one"),
        ("X-Multi", "two"),
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("Content-Type", "application/octet-stream"),
    ]
    async with client() as s, s.post(proxy.url + "/v1/decide/x?a=1&a=2&q=%C3%A9%20x", data=body, headers=headers) as r:
        await r.read()
        request_id = r.headers["X-Request-Id"]
    await proxy.settle()
    for seen in (primary.seen[0], model.seen[0]):
        assert seen.method == "POST"
        assert seen.path_qs == "/v1/decide/x?a=1&a=2&q=%C3%A9%20x"
        assert seen.body == body
        assert seen.all("X-Multi") == ["one", "two"]
        assert seen.header("traceparent") == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        assert seen.header("X-Forwarded-For") == "10.0.0.1, 127.0.0.1"
        assert seen.header("X-Forwarded-Proto") == "http"
        assert seen.header("X-Request-Id") == request_id
        assert seen.header("Content-Type") == "application/octet-stream"
        assert seen.header("User-Agent") is None  # nothing the client did not send
        assert seen.header("Accept-Encoding") is None
    assert model.seen[0].header("X-Shadow-Stage") == "shadow"
    assert primary.seen[0].header("X-Shadow-Stage") is None


async def test_client_request_id_is_kept_and_empty_body_stays_empty(upstreams, make_proxy):
    primary, model = await upstreams(), await upstreams()
    proxy = await make_proxy([route_config("r", primary.url, model.url, **ANY_PATH)])
    async with client() as s, s.get(proxy.url + "/v1/decide", headers={"X-Request-Id": "abc-123"}) as r:
        assert r.headers["X-Request-Id"] == "abc-123"
    assert primary.seen[0].body == b""
    assert primary.seen[0].header("Content-Length") in (None, "0")
    assert primary.seen[0].header("X-Request-Id") == "abc-123"


async def test_hop_by_hop_headers_do_not_leak_either_way(upstreams, make_proxy):
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.Response(body=b"{}")
        response.headers["X-Hop-Reply"] = "secret"
        response.headers["Connection"] = "X-Hop-Reply"
        response.headers["Keep-Alive"] = "timeout=5"
        response.headers["Proxy-Authenticate"] = "Basic"
        response.headers["X-End"] = "kept"
        return response

    primary, model = await upstreams(handler), await upstreams()
    proxy = await make_proxy([route_config("r", primary.url, model.url)])
    sent = {
        "Connection": "keep-alive, X-Hop-Request",
        "X-Hop-Request": "secret",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        "Proxy-Connection": "keep-alive",
        "X-End": "kept",
    }
    async with client() as s, s.post(proxy.url + "/v1/decide", data=b"{}", headers=sent) as r:
        await r.read()
        assert "X-Hop-Reply" not in r.headers
        assert "Proxy-Authenticate" not in r.headers
        assert r.headers.get("Keep-Alive") is None
        assert r.headers["X-End"] == "kept"
    await proxy.settle()
    for seen in (primary.seen[0], model.seen[0]):
        names = {k.lower() for k, _ in seen.headers}
        assert not names & {"x-hop-request", "keep-alive", "te", "proxy-authorization", "proxy-connection"}
        assert seen.header("X-End") == "kept"


async def test_compressed_bodies_pass_through_without_decoding(upstreams, make_proxy):
    packed_reply = gzip.compress(b'{"decision": "approve"}')

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=packed_reply, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})

    primary, model = await upstreams(handler), await upstreams()
    proxy = await make_proxy([route_config("r", primary.url, model.url)])
    packed_request = gzip.compress(b'{"amount": 1}')
    async with (
        client() as s,
        s.post(
            proxy.url + "/v1/decide",
            data=packed_request,
            headers={"Content-Encoding": "gzip", "Accept-Encoding": "gzip"},
        ) as r,
    ):
        assert await r.read() == packed_reply
        assert r.headers["Content-Encoding"] == "gzip"
    assert primary.seen[0].body == packed_request
    assert primary.seen[0].header("Content-Encoding") == "gzip"


async def test_client_cannot_forge_a_model_suggestion(upstreams, make_proxy):
    primary, model = await upstreams(), await upstreams()
    proxy = await make_proxy([route_config("r", primary.url, model.url)])
    forged = {"X-Model-Suggestion": '{"decision": "approve"}', "X-Shadow-Copy": "1"}
    async with client() as s, s.post(proxy.url + "/v1/decide", data=b"{}", headers=forged) as r:
        await r.read()
    assert primary.seen[0].header("X-Model-Suggestion") is None
    assert primary.seen[0].header("X-Shadow-Copy") is None


async def test_head_keeps_the_primary_content_length(upstreams, make_proxy):
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"0123456789")

    primary, model = await upstreams(handler), await upstreams()
    proxy = await make_proxy([route_config("r", primary.url, model.url, **ANY_PATH)])
    async with client() as s, s.head(proxy.url + "/x") as r:
        assert r.status == 200
        assert r.headers["Content-Length"] == "10"


async def test_declared_body_over_limit_is_refused_before_reading(upstreams, make_proxy):
    primary, model = await upstreams(), await upstreams()
    proxy = await make_proxy([route_config("r", primary.url, model.url)], max_body_bytes=1000)
    async with client() as s, s.post(proxy.url + "/v1/decide", data=b"x" * 1001) as r:
        assert r.status == 413
        payload = orjson.loads(await r.read())
        assert "1000 bytes" in payload["error"] and payload["request_id"]
    assert primary.seen == [] and model.seen == []


async def test_chunked_body_growing_past_limit_is_cut_off(upstreams, make_proxy):
    primary, model = await upstreams(), await upstreams()
    proxy = await make_proxy([route_config("r", primary.url, model.url)], max_body_bytes=1000)

    async def chunks():
        for _ in range(10):
            yield b"y" * 300

    async with client() as s, s.post(proxy.url + "/v1/decide", data=chunks()) as r:
        assert r.status == 413
    assert primary.seen == []


async def test_body_at_the_limit_is_accepted(upstreams, make_proxy):
    primary, model = await upstreams(), await upstreams()
    proxy = await make_proxy([route_config("r", primary.url, model.url)], max_body_bytes=1000)
    async with client() as s, s.post(proxy.url + "/v1/decide", data=b"x" * 1000) as r:
        assert r.status == 200
    assert len(primary.seen[0].body) == 1000


async def test_unreachable_primary_is_502_json_and_recorded(upstreams, make_proxy):
    model = await upstreams()
    proxy = await make_proxy([route_config("r", dead_url(), model.url)])
    async with client() as s, s.post(proxy.url + "/v1/decide", data=b"{}") as r:
        assert r.status == 502
        payload = orjson.loads(await r.read())
        assert payload["error"].startswith("primary unreachable") and payload["request_id"]
    await proxy.settle()
    (record,) = proxy.records()
    assert record["primary"]["error"] == "error" and record["primary"]["status"] is None
    assert record["agree"] is None


async def test_primary_timeout_is_504_json(upstreams, make_proxy):
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response(body=b"late")

    primary, model = await upstreams(slow), await upstreams()
    proxy = await make_proxy([route_config("r", primary.url, model.url, primary={"timeout": "100ms"})])
    async with client() as s, s.post(proxy.url + "/v1/decide", data=b"{}") as r:
        assert r.status == 504
        assert "0.1s" in orjson.loads(await r.read())["error"]
    release.set()


async def test_unmatched_request_goes_to_default_upstream_untouched(upstreams, make_proxy):
    primary, model, default = await upstreams(), await upstreams(), await upstreams()
    default.handler = await primary_with(201, b"from default", [("X-Default", "yes")])
    proxy = await make_proxy([route_config("r", primary.url, model.url)], default_upstream=default.url)
    async with client() as s, s.put(proxy.url + "/other/path?x=1", data=b"payload") as r:
        assert r.status == 201
        assert await r.read() == b"from default"
        assert r.headers["X-Default"] == "yes"
    assert default.seen[0].path_qs == "/other/path?x=1" and default.seen[0].body == b"payload"
    assert primary.seen == [] and model.seen == []
    await proxy.settle()
    assert proxy.records() == []


async def test_unmatched_request_without_default_is_404_json(upstreams, make_proxy):
    primary, model = await upstreams(), await upstreams()
    post_only = {"match": {"path_prefix": "/v1/decide", "methods": ["post"]}}
    proxy = await make_proxy([route_config("r", primary.url, model.url, **post_only)])
    async with client() as s, s.get(proxy.url + "/nowhere") as r:
        assert r.status == 404
        assert orjson.loads(await r.read())["error"] == "no route for GET /nowhere"
    # a route restricted to POST does not take a GET
    async with client() as s, s.get(proxy.url + "/v1/decide") as r:
        assert r.status == 404


async def test_several_forwarded_for_lines_are_kept_as_one_list(upstreams, make_proxy):
    primary, model = await upstreams(), await upstreams()
    proxy = await make_proxy([route_config("r", primary.url, model.url)])
    sent = [("X-Forwarded-For", "10.0.0.1"), ("X-Forwarded-For", "10.0.0.2, 10.0.0.3")]
    async with client() as s, s.post(proxy.url + "/v1/decide", data=b"{}", headers=sent) as r:
        await r.read()
    assert primary.seen[0].all("X-Forwarded-For") == ["10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1"]


async def test_an_empty_body_reaches_primary_and_model_framed_the_same(upstreams, make_proxy):
    primary, model = await upstreams(), await upstreams()
    proxy = await make_proxy([route_config("r", primary.url, model.url)])
    async with client() as s, s.post(proxy.url + "/v1/decide", data=b"") as r:
        await r.read()
    await proxy.settle()
    assert primary.seen[0].header("Content-Length") == model.seen[0].header("Content-Length") == "0"


async def test_every_answer_is_counted_with_its_status(upstreams, make_proxy):
    primary, model = await upstreams(), await upstreams()
    proxy = await make_proxy([route_config("r", primary.url, model.url)], max_body_bytes=10)
    async with client() as s:
        async with s.post(proxy.url + "/v1/decide", data=b"x" * 11) as r:
            assert r.status == 413
        async with s.get(proxy.url + "/nowhere") as r:
            assert r.status == 404
    samples = {
        (m.labels["route"], m.labels["served_by"], m.labels["code"]): m.value
        for family in proxy.core.metrics.registry.collect()
        for m in family.samples
        if m.name == "shadow_proxy_requests_total"
    }
    assert samples == {("r", "proxy", "413"): 1.0, ("_unmatched", "proxy", "404"): 1.0}
