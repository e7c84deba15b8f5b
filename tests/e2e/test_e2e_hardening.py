"""Issue 10 against the real server process over loopback: JSON decoding failures keep the
keep-alive connection; /v2/health/live keeps answering while clients flood huge bodies."""

from __future__ import annotations

import http.client
import json
import sys
from pathlib import Path

import httpx
from server_proc import ServerProc

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from health_under_load import huge_bodies, run_load  # noqa: E402

BIG_INT = b"9" * 4301


def _conn(server: ServerProc) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)


def test_decoding_failures_are_400_and_keep_the_connection(server: ServerProc) -> None:
    conn = _conn(server)
    bodies = [b'{"text_input":"hi","max_tokens":' + BIG_INT + b"}",
              b'{"text_input":"\xff","max_tokens":1}', b"[" * 100_000]
    try:
        for path in ("/v2/models/ensemble/generate", "/v1/completions"):
            for body in bodies:
                conn.request("POST", path, body, {"Content-Type": "application/json"})
                r = conn.getresponse()
                payload = json.loads(r.read())
                assert r.status == 400, payload
                assert r.getheader("connection") != "close"
            sock = conn.sock
            conn.request("POST", "/v2/models/ensemble/generate",
                         b'{"text_input":"hi","max_tokens":2}')
            r = conn.getresponse()
            assert r.status == 200, r.read()
            r.read()
            assert conn.sock is sock  # the same TCP connection served the next request
    finally:
        conn.close()


def test_huge_bodies_are_quick_400s_naming_the_field(server: ServerProc) -> None:
    expected = {"huge_prompt": "text_input", "huge_chat": "messages",
                "huge_bad_words": "bad_words", "long_prompt": "prompt"}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for name, (path, body) in huge_bodies(4 * 1024 * 1024 - 1024).items():
            r = client.post(path, content=body)
            assert r.status_code == 400, (name, r.text[:200])
            assert expected[name] in r.text, (name, r.text[:300])


def test_live_keeps_answering_under_a_flood_of_huge_bodies(server: ServerProc) -> None:
    """4 clients post bodies just under --max-body-bytes in a loop; every probe < 1 s."""
    result = run_load(server.url, clients=4, seconds=8.0, probe_interval=0.05)
    assert result.probe_failures == 0 and result.load_errors == 0, result
    assert len(result.probes) >= 40, len(result.probes)
    assert max(result.probes) < 1.0, sorted(result.probes)[-5:]
    assert sum(result.statuses.values()) >= 8, result.statuses  # the flood did flow
    assert {code for _, code in result.statuses} == {400}, result.statuses
    assert httpx.get(server.url + "/v2/health/ready", timeout=5).status_code == 200
