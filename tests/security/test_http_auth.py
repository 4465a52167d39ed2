"""Tokens, roles and limits on a real aiohttp server: who gets 401, 403, 413, 400, 429 and why."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.auth import HttpSecurity, required_role
from streams.cli import main as driftline
from streams.http import make_app
from streams.limits import Limits, RateLimiter
from streams.service import ApiRequest, ApiResponse, Route
from streams.tally import TallyService
from streams.tokens import TokenStore

from .conftest import Served, Server, eventually, request, serve


class Probe(TallyService):
    """One route per role; each answers with who called it."""

    name = "probe"

    def routes(self) -> list[Route]:
        async def who(request: ApiRequest) -> ApiResponse:
            return ApiResponse({"principal": request.principal, "body": request.body})

        async def page(request: ApiRequest) -> ApiResponse:
            return ApiResponse("<h1>page</h1>", content_type="text/html")

        async def slow(request: ApiRequest) -> ApiResponse:
            await asyncio.sleep(5)
            return ApiResponse({})

        return [
            Route("GET", "/query", who),
            Route("POST", "/admin", who),
            Route("POST", "/label", who, role="annotator"),
            Route("POST", "/score", who, role="reader"),
            Route("GET", "/page", page, role="open"),
            Route("GET", "/slow", slow),
        ]


LIMITS = Limits.from_settings(
    max_body_bytes=4096,
    max_json_depth=8,
    max_json_items=100,
    write_rate=1000,
    write_burst=1000,
    timeout_s=0.5,
)


@pytest.fixture
def served() -> Iterator[Served]:
    yield from serve([Probe()], HttpSecurity(limits=LIMITS))


def test_default_roles_follow_the_method_and_routes_may_declare_theirs() -> None:
    async def nothing(request: ApiRequest) -> ApiResponse:
        return ApiResponse({})

    assert required_role(Route("GET", "/x", nothing)) == "reader"
    assert required_role(Route("POST", "/x", nothing)) == "admin"
    assert required_role(Route("DELETE", "/x", nothing)) == "admin"
    assert required_role(Route("GET", "/x", nothing, role="annotator")) == "annotator"
    with pytest.raises(ValueError, match="unknown role"):
        required_role(Route("GET", "/x", nothing, role="root"))


def test_no_token_or_a_wrong_one_is_401_and_a_low_role_403(served: Served) -> None:
    url = f"{served.base}/admin"
    status, headers, body = request("POST", url, json={})
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
    assert (
        "needs a token with role admin" in body["error"] and "tokens add NAME --role admin" in body["error"]
    )
    status, _, body = request("POST", url, json={}, headers={"Authorization": "Bearer dl_forged"})
    assert status == 401 and body["error"].startswith("unknown or revoked token")
    status, _, body = request("POST", url, json={}, headers={"Authorization": "Basic YWxhZGRpbjpz"})
    assert status == 401
    status, _, body = request("POST", url, json={}, headers=served.headers("annotator"))
    assert (status, body) == (403, {"error": "annotator has role annotator; this route needs admin"})
    status, _, body = request("POST", url, json={"x": 1}, headers=served.headers("admin"))
    assert (status, body) == (200, {"principal": "admin", "body": {"x": 1}})


def test_higher_roles_do_everything_lower_ones_do(served: Served) -> None:
    for route, allowed in (("/label", ("annotator", "admin")), ("/score", ("reader", "annotator", "admin"))):
        for role in ("reader", "annotator", "admin"):
            status, _, body = request("POST", served.base + route, json={}, headers=served.headers(role))
            assert status == (200 if role in allowed else 403), (route, role, body)
            if status == 200:
                assert body["principal"] == role


def test_queries_are_open_by_default_and_reader_only_by_setting(served: Served) -> None:
    assert request("GET", f"{served.base}/query")[2] == {"principal": None, "body": None}
    assert (
        request("GET", f"{served.base}/query", headers=served.headers("reader"))[2]["principal"] == "reader"
    )
    served.security.queries_open = False
    assert request("GET", f"{served.base}/query")[0] == 401
    assert request("GET", f"{served.base}/query", headers=served.headers("reader"))[0] == 200
    for probe in ("/health", "/ready", "/metrics", "/page", "/driftline-auth.js"):  # still open
        assert request("GET", served.base + probe)[0] == 200, probe


def test_pages_load_without_a_token_and_carry_a_content_security_policy(served: Served) -> None:
    status, headers, body = request("GET", f"{served.base}/page")
    assert (status, body) == (200, "<h1>page</h1>")
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    status, headers, script = request("GET", f"{served.base}/driftline-auth.js")
    assert status == 200 and "sessionStorage" in script and "Authorization" in script
    assert request("GET", f"{served.base}/auth/whoami")[0] == 401
    assert request("GET", f"{served.base}/auth/whoami", headers=served.headers("annotator"))[2] == {
        "name": "annotator",
        "role": "annotator",
    }


def test_unknown_paths_and_methods_answer_json(served: Served) -> None:
    status, _, body = request("GET", f"{served.base}/nowhere/../../etc/passwd")
    assert status == 404 and body == {"error": "Not Found"}
    status, headers, body = request("DELETE", f"{served.base}/admin")
    assert status == 405 and "POST" in headers["Allow"] and body == {"error": "Method Not Allowed"}


def test_bodies_past_the_size_limit_get_413_not_a_reset(served: Served) -> None:
    big = b'{"x": "' + b"a" * 100_000 + b'"}'
    status, _, body = request("POST", f"{served.base}/admin", data=big, headers=served.headers("admin"))
    assert status == 413 and "4096 bytes" in body["error"]

    async def chunks():  # no Content-Length: the limit holds while reading
        for _ in range(50):
            yield b"a" * 1024

    status, _, body = request("POST", f"{served.base}/admin", data=chunks(), headers=served.headers("admin"))
    assert status == 413


def test_json_past_the_depth_or_size_limits_or_not_finite_is_400(served: Served) -> None:
    admin = served.headers("admin")
    cases = {
        "[" * 9 + "]" * 9: "nested too deeply",
        "[" * 2000 + "]" * 2000: "nested too deeply",  # past Python's own recursion limit too
        json.dumps(list(range(200))): "more than 100 values",
        '{"x": NaN}': "NaN is not valid JSON",
        '{"x": -Infinity}': "-Infinity is not valid JSON",
        '{"x": ': "not valid JSON",
        b'"\xff\xfe"': "not valid JSON",
    }
    for raw, reason in cases.items():
        data = raw if isinstance(raw, bytes) else raw.encode()
        status, _, body = request("POST", f"{served.base}/admin", data=data, headers=admin)
        assert status == 400 and reason in body["error"], (raw[:20], body)
    ok = "[" * 7 + "]" * 7
    assert request("POST", f"{served.base}/admin", data=ok.encode(), headers=admin)[0] == 200


def test_writes_past_a_tokens_rate_get_429_with_retry_after(served: Served) -> None:
    served.security.writes = RateLimiter(rate=2.0, burst=3)
    answers = [
        request("POST", f"{served.base}/admin", json={}, headers=served.headers("admin")) for _ in range(6)
    ]
    statuses = [a[0] for a in answers]
    assert statuses[:3] == [200, 200, 200] and 429 in statuses
    limited = next(a for a in answers if a[0] == 429)
    assert limited[1]["Retry-After"] == "1" and "too many writes" in limited[2]["error"]
    # the bucket is per token: another token still writes, and reads are not limited
    assert request("POST", f"{served.base}/label", json={}, headers=served.headers("annotator"))[0] == 200
    assert all(request("GET", f"{served.base}/query")[0] == 200 for _ in range(6))


def test_a_handler_past_the_time_limit_gets_503(served: Served) -> None:
    started = time.monotonic()
    status, headers, body = request("GET", f"{served.base}/slow")
    assert status == 503 and "did not finish within 0.5s" in body["error"] and headers["Retry-After"] == "1"
    assert time.monotonic() - started < 3


def test_a_body_that_never_arrives_gets_408(served: Served) -> None:
    host, port = served.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        head = f"POST /admin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {served.tokens['admin']}\r\n"
        conn.sendall(f"{head}Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{".encode())
        answer = conn.recv(4096).decode()  # the other 99 bytes never come
    assert answer.startswith("HTTP/1.1 408") and "did not arrive within 0.5s" in answer


def test_tokens_added_and_revoked_with_the_cli_apply_to_a_running_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    security = HttpSecurity(home=home)  # follows home/tokens.jsonl, as a worker on that home does
    with Server(make_app([Probe()], security=security)) as base:
        status, _, body = request("POST", f"{base}/label", json={})
        assert status == 401 and f"driftline --home {home} tokens add NAME" in body["error"]
        assert "no tokens exist yet" in body["error"]
        cli = ["--home", str(home), "--bootstrap-servers", "127.0.0.1:1"]
        assert driftline([*cli, "annotators", "add", "alice"]) == 0
        token = capsys.readouterr().out.strip().splitlines()[-1]
        alice = {"Authorization": f"Bearer {token}"}
        assert eventually(lambda: request("POST", f"{base}/label", json={}, headers=alice)[0] == 200)
        assert request("POST", f"{base}/admin", json={}, headers=alice)[0] == 403
        assert driftline([*cli, "tokens", "revoke", "alice"]) == 0
        assert eventually(lambda: request("POST", f"{base}/label", json={}, headers=alice)[0] == 401)
    stored = (home / "tokens.jsonl").read_text()
    assert token not in stored and "alice" in stored  # hashed, never the secret


def test_binding_every_interface_without_tokens_warns_loudly(capfd: pytest.CaptureFixture[str]) -> None:
    security = HttpSecurity(store=TokenStore(), bind_host="0.0.0.0")
    with Server(make_app([Probe()], security=security)):
        assert eventually(lambda: "NO TOKENS are configured" in capfd.readouterr().err)
