"""Behind a front door with replicas, a call's URLs name its replica (``--route-prefix``): the answer
and the WHIP Location carry the prefix; the front door strips it (docker/frontdoor/nginx.conf)."""

from __future__ import annotations

import subprocess
import sys

import aiohttp
import pytest

from tests.support.offers import local_offer
from tests.support.server import ROOT, ServerProcess

pytestmark = pytest.mark.slow


async def test_the_urls_of_a_call_carry_the_replica_prefix(tmp_path):
    with ServerProcess("--route-prefix", "/r/peer7", log_path=tmp_path / "server.log") as server:
        async with aiohttp.ClientSession() as http:
            offer = {"sdp": await local_offer(), "type": "offer"}
            async with http.post(server.url + "/offer", json=offer) as r:
                body = await r.json()
                assert r.status == 200, body
            for key in ("events_url", "control_url", "session_url"):
                assert body[key].startswith(f"/r/peer7/sessions/{body['session_id']}"), body[key]
            # The server itself answers the unprefixed path: the front door strips the prefix.
            async with http.delete(server.url + body["session_url"].removeprefix("/r/peer7")) as r:
                assert r.status == 204
            headers = {"Content-Type": "application/sdp"}
            async with http.post(server.url + "/whip", data=await local_offer(), headers=headers) as r:
                assert r.status == 201
                location = r.headers["Location"]
            assert location.startswith("/r/peer7/whip/")
            async with http.delete(server.url + location.removeprefix("/r/peer7")) as r:
                assert r.status == 200


@pytest.mark.parametrize("prefix", ["r/peer1", "/r/../x", "/r/peer 1", "//evil.example"])
def test_a_prefix_that_is_not_a_plain_path_is_refused_at_start(prefix):
    cmd = [sys.executable, "-m", "voicepeer", "serve", "--route-prefix", prefix]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "--route-prefix" in done.stderr
