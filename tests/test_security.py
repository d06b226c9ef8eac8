"""Authentication, origins, capabilities and limits at the HTTP surface.

Most of these run against the real app with a model path that does not exist: an offer that passes the
front door then meets ``503 models_failed``, which shows it got past every check this file is about
without loading a model. The capability tests need real calls and load the models."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.support.calls import serve, wait_until
from tests.support.offers import local_offer
from voicepeer.config import ASRConfig, Config, SecurityConfig, ServerConfig
from voicepeer.transport.app import STATE, create_app
from voicepeer.transport.auth import CallTokens, _sign, mint_call_token, token_claims

SECRET = "s3cret-for-tests"


@pytest.fixture
async def make_client():
    clients: list[TestClient] = []

    async def make(**config) -> TestClient:
        app = create_app(Config(asr=ASRConfig(model="/nonexistent/whisper"), **config))
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        for _ in range(200):  # wait for the (failing) background load
            if app[STATE].load_error:
                break
            await asyncio.sleep(0.05)
        return client

    yield make
    for client in clients:
        await client.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def offer_status(client: TestClient, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    r = await client.post("/offer", json={"type": "offer", "sdp": await local_offer()}, headers=headers)
    return r.status, await r.json()


async def test_without_a_token_every_signaling_route_is_401_json(make_client):
    client = await make_client(security=SecurityConfig(auth_token=SECRET))
    for method, path in [("POST", "/offer"), ("POST", "/whip"), ("GET", "/metrics"), ("GET", "/ice-servers")]:
        for headers in ({}, bearer("wrong"), {"Authorization": "Basic czNjcmV0"}):
            r = await client.request(method, path, headers=headers, data=b"{}")
            assert r.status == 401, (method, path, headers)
            assert (await r.json())["error"] == "unauthorized" and r.headers["WWW-Authenticate"]
    status, body = await offer_status(client, bearer(SECRET))
    assert status == 503 and body["error"] == "models_failed"  # through the door
    assert (await client.get("/metrics", headers=bearer(SECRET))).status == 200
    assert (await client.get("/healthz")).status == 503  # health is for anyone: no secrets in it


async def test_per_call_tokens_open_one_call_before_they_expire(make_client):
    client = await make_client(security=SecurityConfig(auth_token=SECRET))
    token = mint_call_token(SECRET, ttl_s=60)
    # Reading the ICE servers with it does not spend it.
    r = await client.get("/ice-servers", headers=bearer(token))
    assert r.status == 200 and (await r.json()) == {"iceServers": []}
    # A refused offer (here: no models) does not spend it: the retry the refusal invites gets in.
    assert (await offer_status(client, bearer(token)))[0] == 503
    assert (await offer_status(client, bearer(token)))[0] == 503
    expired = mint_call_token(SECRET, ttl_s=1, now=time.time() - 10)
    status, body = await offer_status(client, bearer(expired))
    assert status == 401 and "expired" in body["message"]
    forged = mint_call_token("another secret", ttl_s=60)
    status, body = await offer_status(client, bearer(forged))
    assert status == 401 and "not a valid token" in body["message"]
    tampered = token.split(".")
    tampered[1] = str(int(tampered[1]) + 3000)
    assert (await offer_status(client, bearer(".".join(tampered))))[0] == 401
    # A call token is for opening calls, not for the operator's metrics.
    assert (await client.get("/metrics", headers=bearer(mint_call_token(SECRET)))).status == 401


def test_call_tokens_are_bounded_in_life_and_memory():
    tokens = CallTokens(SECRET)
    once = mint_call_token(SECRET, ttl_s=60)
    assert tokens.check(once, spend=False) is None and tokens.check(once, spend=True) is None
    assert tokens.check(once, spend=True) == "the call token was already used"
    tokens.release(once)  # its offer was refused
    assert tokens.check(once, spend=True) is None
    with pytest.raises(ValueError):
        mint_call_token(SECRET, ttl_s=7200)
    assert tokens.check("v1.1.2", spend=True) == "not a valid token"
    assert tokens.check("garbage" * 100, spend=True) == "not a valid token"
    now = time.time()
    for _ in range(100):
        assert tokens.check(mint_call_token(SECRET, 1, now=now), spend=True, now=now) is None
    # Once expired, spent tokens are forgotten when room is needed.
    later = now + 10
    tokens._used.update({f"n{i}": int(now) for i in range(100_000)})
    assert tokens.check(mint_call_token(SECRET, 60, now=later), spend=True, now=later) is None
    assert len(tokens._used) < 1000


async def test_metrics_can_be_made_public(make_client):
    client = await make_client(security=SecurityConfig(auth_token=SECRET, metrics_public=True))
    assert (await client.get("/metrics")).status == 200
    assert (await client.post("/offer", json={})).status == 401


async def test_a_foreign_origin_is_refused_and_the_own_and_allowed_ones_pass(make_client):
    client = await make_client(security=SecurityConfig(allow_origins=("https://app.example.com", "null")))
    own = str(client.make_url("")).rstrip("/")
    for origin, status in [
        ("https://evil.example", 403),
        ("http://127.0.0.1.evil.example", 403),
        (own, 503),
        ("https://APP.example.com", 503),
        ("null", 503),
    ]:
        code, body = await offer_status(client, {"Origin": origin})
        assert code == status, (origin, body)
        if status == 403:
            assert body["error"] == "forbidden_origin"
    # Without --allow-origin null, a file:// page (Origin: null) is foreign.
    strict = await make_client()
    assert (await offer_status(strict, {"Origin": "null"}))[0] == 403
    r = await strict.get("/metrics", headers={"Origin": "https://evil.example"})
    assert r.status == 403


async def test_a_text_plain_offer_is_refused_before_anything_else(make_client):
    client = await make_client()
    sdp = await local_offer()
    r = await client.post(
        "/offer", data=f'{{"type": "offer", "sdp": {sdp!r}}}', headers={"Content-Type": "text/plain"}
    )
    assert r.status == 415 and (await r.json())["error"] == "unsupported_media_type"


async def test_offers_are_rate_limited_per_client_address(make_client):
    # A burst of 2, then one every 7.5 s.
    client = await make_client(security=SecurityConfig(offers_per_minute=8))
    statuses = [(await offer_status(client))[0] for _ in range(4)]
    assert statuses[:2] == [503, 503] and statuses[2:] == [429, 429]
    r = await client.post("/offer", json={})
    assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
    assert (await r.json())["error"] == "rate_limited"
    metrics = await (await client.get("/metrics")).text()
    assert 'voicepeer_rejections_total{code="rate_limited"}' in metrics


async def test_unknown_routes_and_methods_answer_json(make_client):
    client = await make_client()
    r = await client.get("/nope")
    assert r.status == 404 and (await r.json())["error"] == "not_found"
    r = await client.get("/offer")
    assert (
        r.status == 405 and (await r.json())["error"] == "method_not_allowed" and "POST" in r.headers["Allow"]
    )
    r = await client.put("/sessions/x/control")
    assert r.status == 405 and r.content_type == "application/json"


def without(prefix: str):
    return lambda sdp: "\r\n".join(line for line in sdp.split("\r\n") if not line.startswith(prefix))


@pytest.mark.parametrize(
    ("mutation", "code"),
    [
        (without("a=fingerprint"), "insecure_offer"),
        (without("a=setup"), "insecure_offer"),
        (without("a=ice-pwd"), "invalid_sdp"),
        # Found by the fuzzer: a BUNDLE group naming a mid no m-line has made aiortc raise (a 500).
        (lambda sdp: sdp.replace("a=mid:0", "a=mid:renamed", 1), "invalid_sdp"),
        (lambda sdp: sdp.replace("a=mid:1", "a=mid:0", 1), "invalid_sdp"),
    ],
)
async def test_an_offer_that_cannot_be_secured_is_refused_before_a_slot_is_taken(make_client, mutation, code):
    client = await make_client()
    r = await client.post("/offer", json={"type": "offer", "sdp": mutation(await local_offer())})
    assert r.status == 400 and (await r.json())["error"] == code


async def test_a_public_address_without_a_token_is_warned_about(make_client):
    client = await make_client(server=ServerConfig(host="0.0.0.0"))
    body = await (await client.get("/healthz")).json()
    assert any("without --auth-token" in w for w in body["warnings"])
    quiet = await make_client(server=ServerConfig(host="0.0.0.0"), security=SecurityConfig(auth_token=SECRET))
    assert "warnings" not in await (await quiet.get("/healthz")).json()


@pytest.mark.slow
async def test_a_session_id_is_not_enough_and_another_calls_capability_does_not_fit(services):
    server = await serve(services)
    http = aiohttp.ClientSession(base_url=str(server.make_url("")))
    try:
        answers = []
        for _ in range(2):
            async with http.post("/offer", json={"type": "offer", "sdp": await local_offer()}) as r:
                answers.append(await r.json())
        a, b = answers
        a_cap = a["session_url"].split("cap=")[1]
        for url in (
            f"/sessions/{b['session_id']}",
            f"/sessions/{b['session_id']}?cap={a_cap}",
            f"/sessions/{b['session_id']}?cap=",
        ):
            async with http.delete(url) as r:
                assert r.status == 404, url
            async with http.post(url + ("&" if "?" in url else "?") + "x=1", json={"type": "mute"}) as r:
                assert r.status in (404, 405)
        async with http.get(f"/sessions/{b['session_id']}/events") as r:
            assert r.status == 404
        async with http.post(f"/sessions/{b['session_id']}/control?cap={a_cap}", json={"type": "mute"}) as r:
            assert r.status == 404
        assert b["session_id"] in server.app[STATE].sessions
        for answer in answers:
            async with http.delete(answer["session_url"]) as r:
                assert r.status == 204
        await wait_until(lambda: not server.app[STATE].sessions, 5)
    finally:
        await http.close()
        await server.close()


async def test_an_offer_whose_body_arrives_in_pieces_is_read_whole(make_client):
    """A slow or proxied link delivers the body in several TCP segments; one read() sees only the first."""
    client = await make_client()
    body = json.dumps({"type": "offer", "sdp": await local_offer()}).encode()
    reader, writer = await asyncio.open_connection(client.host, client.port)
    head = (
        f"POST /offer HTTP/1.1\r\nHost: {client.host}:{client.port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    writer.write(head + body[:100])
    await writer.drain()
    for start in range(100, len(body), 400):
        await asyncio.sleep(0.05)
        writer.write(body[start : start + 400])
        await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 503 " in status_line and b"models_failed" in rest, answer[:300]


@pytest.mark.slow
async def test_a_flood_of_messages_is_dropped_with_one_rate_limited_event_and_the_call_goes_on(services):
    from tests.support.calls import call

    async with call(services, security=SecurityConfig(messages_per_second=20)) as (server, client):
        for _ in range(300):
            client.channel.send('{"type": "ping"}')
        await client.wait_for(lambda m: m["type"] == "error" and m["code"] == "rate_limited", 10)
        await asyncio.sleep(1.0)
        pongs = len(client.messages("pong"))
        assert 20 <= pongs <= 80, pongs  # the burst (40) and what a second's refill allows
        assert len([m for m in client.messages("error") if m["code"] == "rate_limited"]) == 1
        session = server.app[STATE].sessions[client.session_id]
        assert session.call.rate_limited >= 200
        client.channel.send('{"type": "ping"}')  # the bucket has refilled: heard again
        await wait_until(lambda: len(client.messages("pong")) > pongs, 5)
        # The HTTP control endpoint shares the call's budget: a flood there is 429.
        url = client.base_url + client.answer["control_url"]
        async with aiohttp.ClientSession() as http:
            statuses = []
            for _ in range(60):
                async with http.post(url, json={"type": "ping"}) as r:
                    statuses.append(r.status)
            assert 200 in statuses and 429 in statuses
            async with http.get(client.base_url + "/metrics") as r:
                assert "voicepeer_rate_limited_messages_total" in await r.text()


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://[::1"},
        {"Origin": "http://[x]"},
        {"Origin": "not an origin"},
        {"Authorization": "Bearer v1.1.a.\u00e9"},
        {"Authorization": "Bearer \u00e9\u00e9\u00e9"},
    ],
)
async def test_odd_headers_get_4xx_json_not_500(make_client, headers):
    client = await make_client(security=SecurityConfig(auth_token=SECRET))
    r = await client.post("/offer", json={}, headers=headers)
    assert 400 <= r.status < 500 and (await r.json())["error"]


async def test_a_non_ascii_capability_is_a_404_not_a_500(make_client):
    client = await make_client()
    r = await client.get("/sessions/x/events?cap=%C3%A9")
    assert r.status == 404 and (await r.json())["error"] == "not_found"


async def test_a_dns_rebound_page_is_not_the_servers_own_origin(make_client):
    """evil.example rebound to 127.0.0.1 sends its own name as Origin and Host: on loopback without a
    secret, only loopback names count as the server's own."""
    client = await make_client()
    rebound = {"Origin": "http://evil.example:8080", "Host": "evil.example:8080"}
    status, body = await offer_status(client, rebound)
    assert status == 403 and body["error"] == "forbidden_origin"
    own = {"Origin": "http://localhost:8080", "Host": "localhost:8080"}
    assert (await offer_status(client, own))[0] == 503
    # With a secret the page would need a token it cannot have, so a deployment's own names count.
    guarded = await make_client(security=SecurityConfig(auth_token=SECRET))
    status, _ = await offer_status(guarded, {**rebound, **bearer(SECRET)})
    assert status == 503


async def test_allowed_cross_origin_pages_get_cors_and_others_do_not(make_client):
    client = await make_client(security=SecurityConfig(allow_origins=("https://app.example.com",)))
    preflight = {
        "Origin": "https://app.example.com",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    for path in ("/offer", "/whip", "/sessions/x/control", "/sessions/x/events"):
        r = await client.options(path, headers=preflight)
        assert r.status == 204, path
        assert r.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
        assert "POST" in r.headers["Access-Control-Allow-Methods"]
        assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
    r = await client.post("/offer", json={}, headers={"Origin": "https://app.example.com"})
    assert r.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "Location" in r.headers["Access-Control-Expose-Headers"]
    r = await client.options("/offer", headers={**preflight, "Origin": "https://evil.example"})
    assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers


async def test_unauthenticated_offers_do_not_use_up_the_address_rate(make_client):
    client = await make_client(security=SecurityConfig(auth_token=SECRET, offers_per_minute=8))
    for _ in range(6):
        assert (await offer_status(client, bearer("wrong")))[0] == 401
    assert (await offer_status(client, bearer(SECRET)))[0] == 503


def test_rates_apply_to_an_ipv6_clients_whole_64():
    from voicepeer.transport.security import _client_key

    assert _client_key("2001:db8:1:2::1") == _client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert _client_key("127.0.0.1") == "127.0.0.1" and _client_key(None) == "?"


def test_a_call_token_may_carry_signed_claims():
    tokens = CallTokens(SECRET)
    token = mint_call_token(SECRET, 60, context={"name": "Ada"}, greeting="Hello Ada!")
    assert tokens.check(token, spend=False) is None
    assert token_claims(token) == {"context": {"name": "Ada"}, "greeting": "Hello Ada!"}
    parts = token.split(".")
    forged = mint_call_token("other", 60, context={"name": "Eve"}).split(".")[3]
    assert tokens.check(".".join([*parts[:3], forged, parts[4]]), spend=False) == "not a valid token"
    assert tokens.check(".".join([*parts[:3], parts[4]]), spend=False) == "not a valid token"  # claims cut
    with pytest.raises(ValueError, match="claims"):
        mint_call_token(SECRET, 60, context={"x": "y" * 5000})


async def test_a_calls_token_claims_set_its_variables_and_greeting(services):
    server = await serve(services, security=SecurityConfig(auth_token=SECRET))
    http = aiohttp.ClientSession(base_url=str(server.make_url("")))
    try:
        token = mint_call_token(SECRET, 60, context={"name": "Ada"}, greeting="Hello Ada!")
        async with http.post(
            "/offer", json={"type": "offer", "sdp": await local_offer()}, headers=bearer(token)
        ) as r:
            answer = await r.json()
            assert r.status == 200, answer
        call = server.app[STATE].sessions[answer["session_id"]].call
        assert call.conversation.history.context == {"name": "Ada"} and call.greeting == "Hello Ada!"
        payload = f"v1.{int(time.time()) + 60}.nonce.bm90IGpzb24"  # signed, but "not json"
        garbled = f"{payload}.{_sign(SECRET, payload)}"
        for bad in (mint_call_token(SECRET, 60, context={"not a name": "x"}), garbled):
            async with http.post(
                "/offer", json={"type": "offer", "sdp": await local_offer()}, headers=bearer(bad)
            ) as r:
                assert r.status == 400 and (await r.json())["error"] == "bad_claims"
        async with http.delete(answer["session_url"]) as r:
            assert r.status == 204
    finally:
        await http.close()
        await server.close()
