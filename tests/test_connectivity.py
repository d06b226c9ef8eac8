"""Connecting whatever a standard client offers: DTLS with an RSA or an ECDSA certificate in either
role, offers whose candidates are unusable or missing, and a reason for every failed connection.

The client is aiortc on loopback with the certificate and SDP a third-party stack would send (GStreamer
and Firefox themselves are in test_whip_gstreamer.py and test_browser_firefox.py). The server is the
real application with the real models."""

from __future__ import annotations

import re
import uuid

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.rtcdtlstransport import RTCCertificate, generate_certificate
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.calls import serve, wait_until
from voicepeer.config import ServerConfig
from voicepeer.transport.app import STATE
from voicepeer.transport.candidates import usable_remote_candidates
from voicepeer.transport.dtls import Certificate, use_certificate

pytestmark = pytest.mark.slow


def rsa_certificate() -> Certificate:
    """What GStreamer's webrtcbin and many WHIP encoders use: RSA-2048, with suites for it."""
    return Certificate.generate(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture
async def server(services):
    server = await serve(services, server=ServerConfig(max_sessions=2, connect_timeout_s=8))
    try:
        yield server
    finally:
        await server.close()


async def post_offer(server, sdp: str) -> tuple[int, dict]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(server.make_url("/offer"), json={"sdp": sdp, "type": "offer"}) as r,
    ):
        return r.status, await r.json()


def client(certificate: RTCCertificate | None = None) -> RTCPeerConnection:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if certificate is not None:
        use_certificate(pc, certificate)
    pc.createDataChannel("events")
    pc.addTransceiver("audio", direction="sendrecv")
    return pc


async def connected(pc: RTCPeerConnection, timeout: float = 15) -> str:
    """The client's connection state once it settles (connected or failed)."""
    await wait_until(lambda: pc.connectionState in ("connected", "failed", "closed"), timeout)
    return pc.connectionState


@pytest.mark.parametrize("setup", ["actpass", "active"])
@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
async def test_a_client_certificate_of_either_kind_connects_in_either_dtls_role(server, kind, setup):
    """``actpass``: we answer ``active`` and are the DTLS client, so the suite is chosen for the
    client's certificate (an RSA one found no suite in common with aiortc's ECDSA-only list);
    ``active``: we answer ``passive``, are the DTLS server, and check the client's certificate."""
    pc = client(rsa_certificate() if kind == "rsa" else None)
    try:
        await pc.setLocalDescription(await pc.createOffer())
        offer = pc.localDescription.sdp.replace("a=setup:actpass", f"a=setup:{setup}")
        status, body = await post_offer(server, offer)
        assert status == 200, body
        ours = "active" if setup == "actpass" else "passive"
        assert f"a=setup:{ours}" in body["sdp"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="answer"))
        assert await connected(pc) == "connected"
        session = server.app[STATE].sessions[body["session_id"]]
        await wait_until(lambda: session.certificate.cipher is not None, 5)
        # The suite follows the DTLS server's certificate: the client's when we are the client.
        expected = "ECDHE-RSA" if (kind == "rsa" and setup == "actpass") else "ECDHE-ECDSA"
        assert session.certificate.cipher.startswith(expected), session.certificate.cipher
    finally:
        await pc.close()


def unusable_candidates(sdp: str, how: str) -> str:
    """The offer with its candidates replaced by mDNS names nobody here answers for (``mdns``) or
    removed (``none``), and ``a=end-of-candidates`` kept: the client says it has no others."""
    name = f"{uuid.uuid4()}.local"

    def mdns(match: re.Match[str]) -> str:
        fields = match.group(1).split(" ")
        fields[4] = name
        return "a=candidate:" + " ".join(fields) + "\r\n"

    candidate = re.compile(r"a=candidate:(.*)\r\n")
    sdp = candidate.sub(mdns, sdp) if how == "mdns" else candidate.sub("", sdp)
    assert "a=end-of-candidates" in sdp
    return sdp


@pytest.mark.parametrize("how", ["mdns", "none"])
async def test_an_offer_with_no_usable_candidate_gets_ours_and_connects(server, how):
    """The client's checks reach our candidates from its real address, which ICE learns then
    (peer-reflexive): the end-of-candidates must not drop our side before it has gathered."""
    pc = client()
    try:
        await pc.setLocalDescription(await pc.createOffer())
        status, body = await post_offer(server, unusable_candidates(pc.localDescription.sdp, how))
        assert status == 200, body
        assert "a=candidate:" in body["sdp"] and "c=IN IP4 0.0.0.0" not in body["sdp"], body["sdp"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="answer"))
        assert await connected(pc) == "connected"
    finally:
        await pc.close()


async def failed_session_error(server, pc: RTCPeerConnection, offer: str) -> dict:
    """Posts ``offer`` from ``pc`` and returns the ``error`` event the server's session sent when its
    connection failed."""
    status, body = await post_offer(server, offer)
    assert status == 200, body
    session = server.app[STATE].sessions[body["session_id"]]
    errors: list[dict] = []
    session.call.events.subscribe(lambda e: errors.append(e) if e["type"] == "error" else None)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="answer"))
    await wait_until(lambda: bool(errors) or session.closed, 20)
    await wait_until(lambda: bool(errors), 2)
    return errors[0]


async def test_a_failed_handshake_is_reported_with_the_alert(server):
    """A client with an RSA certificate but aiortc's ECDSA-only suites, as DTLS server, has nothing
    to choose from and says so: the server tells the client and its log which alert it got."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pc = client(RTCCertificate(key=rsa_key, cert=generate_certificate(rsa_key)))
    try:
        await pc.setLocalDescription(await pc.createOffer())
        error = await failed_session_error(server, pc, pc.localDescription.sdp)
        assert error["code"] == "connection_failed"
        assert error["message"].startswith("DTLS handshake failed: received handshake_failure"), error
    finally:
        await pc.close()


async def test_a_certificate_that_does_not_match_its_fingerprint_is_refused_and_reported(server):
    pc = client()
    try:
        await pc.setLocalDescription(await pc.createOffer())
        forged = re.sub(
            r"(a=fingerprint:sha-256 )([0-9A-F]{2})",
            lambda m: m.group(1) + ("00" if m.group(2) != "00" else "11"),
            pc.localDescription.sdp,
        )
        error = await failed_session_error(server, pc, forged)
        assert error["code"] == "connection_failed"
        assert error["message"].startswith("DTLS failed"), error
    finally:
        await pc.close()


async def test_a_whip_client_trickling_only_unusable_candidates_still_connects(server):
    """It trickles one mDNS name (``PATCH``), then the end of its candidates: our side stays up and
    the client's checks connect it."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio", direction="sendonly")
    try:
        await pc.setLocalDescription(await pc.createOffer())
        offer = re.sub(r"a=candidate:.*\r\n|a=end-of-candidates\r\n", "", pc.localDescription.sdp)
        ufrag = re.search(r"a=ice-ufrag:(\S+)", offer).group(1)
        pwd = re.search(r"a=ice-pwd:(\S+)", offer).group(1)
        async with aiohttp.ClientSession(base_url=str(server.make_url(""))) as http:
            async with http.post("/whip", data=offer, headers={"Content-Type": "application/sdp"}) as r:
                assert r.status == 201, await r.text()
                location, etag, answer = r.headers["Location"], r.headers["ETag"], await r.text()
            frag = (
                f"a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n"
                f"a=candidate:1 1 udp 2122260223 {uuid.uuid4()}.local 40000 typ host\r\n"
                "a=end-of-candidates\r\n"
            )
            headers = {"Content-Type": "application/trickle-ice-sdpfrag", "If-Match": etag}
            async with http.patch(location, data=frag, headers=headers) as r:
                assert r.status == 204, await r.text()
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            assert await connected(pc) == "connected"
            async with http.delete(location) as r:
                assert r.status == 200
    finally:
        await pc.close()


async def test_every_candidate_of_a_bundle_reaches_its_transport(server):
    """Firefox's shape: the candidates on the first audio and the data sections, none on the
    bundled second audio (the client's unprocessed capture). aiortc kept one section's candidates,
    sometimes the empty one's; the server must know all of them."""
    pc = client()
    pc.addTransceiver("audio", direction="sendonly")
    try:
        await pc.setLocalDescription(await pc.createOffer())
        sections = pc.localDescription.sdp.split("\r\nm=")
        audio2 = next(i for i, s in enumerate(sections) if s.startswith("audio") and i > 1)
        sections[audio2] = re.sub(r"a=candidate:.*\r\n", "", sections[audio2] + "\r\n").rstrip("\r\n")
        offer = "\r\nm=".join(sections)
        status, body = await post_offer(server, offer)
        assert status == 200, body
        session = server.app[STATE].sessions[body["session_id"]]
        assert usable_remote_candidates(session.pc) >= offer.count("a=candidate:") // 2
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="answer"))
        assert await connected(pc) == "connected"
    finally:
        await pc.close()
