"""The dashboard's locks: bind refusal, the access token, CSRF, traversal, security headers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from mqi import api
from mqi.config import Config, ConfigError, WebConfig, parse_config
from mqi.web.app import create_app
from mqi.web.security import CSRF_COOKIE
from tests.helpers import run_mqi

LOCAL = "http://127.0.0.1:8050"
CASE = "Phantom_A_0c1d2e3f"
DOSE = b"DICM-not-really" * 100


def make_config(tmp_path: Path, **web: Any) -> Config:
    return parse_config(
        {
            "watch_dir": str(tmp_path / "in"),
            "results_dir": str(tmp_path / "results"),
            "state_dir": str(tmp_path / "state"),
            "web": web,
        }
    )


@pytest.fixture
def config(tmp_path: Path) -> Config:
    config = make_config(tmp_path)
    results = tmp_path / "results" / CASE
    results.mkdir(parents=True)
    (results / "RD.beam1.dcm").write_bytes(DOSE)
    (tmp_path / "results" / "secret.txt").write_text("another case's file")
    (tmp_path / "outside.txt").write_text("not a result")
    with api.open(config) as session:
        store = session.store
        store.upsert_case(CASE, case_uid="c0ffee", source_dir=tmp_path / "in" / "a", status="failed")
        store.set_beams(CASE, [{"number": 1, "name": "G0"}, {"number": 2, "name": "G90"}])
        store.update_case(CASE, results_dir=results)
    return config


def test_a_non_loopback_bind_needs_a_token_or_a_proxy_header() -> None:
    with pytest.raises(ConfigError, match="not loopback"):
        WebConfig().check_bind("0.0.0.0:8050")
    assert WebConfig().check_bind("127.0.0.1:8050") == ("127.0.0.1", 8050)
    assert WebConfig().check_bind("localhost:9000") == ("localhost", 9000)
    assert WebConfig().check_bind("[::1]:8050") == ("::1", 8050)
    assert WebConfig(token="t" * 32).check_bind("0.0.0.0:8050") == ("0.0.0.0", 8050)
    assert WebConfig(trusted_proxy_header="X-Remote-User").check_bind("10.1.2.3:80") == ("10.1.2.3", 80)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        WebConfig().check_bind("8050")


def test_mqi_serve_refuses_to_start_on_a_public_address_without_a_token(tmp_path: Path) -> None:
    path = tmp_path / "mqi.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\n")
    result = run_mqi("serve", "--config", str(path), "--bind", "0.0.0.0:18999", timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "not loopback" in result.stderr
    assert "Traceback" not in result.stderr


def test_without_a_token_only_loopback_host_names_are_served(config: Config) -> None:
    # A page elsewhere whose name resolves to 127.0.0.1 (DNS rebinding) gets nothing.
    client = TestClient(create_app(config), base_url="http://evil.example:8050")
    response = client.get(f"/cases/{CASE}")
    assert response.status_code == 403 and CASE not in response.text
    for host in ("http://localhost:8050", "http://[::1]:8050", LOCAL):
        assert TestClient(create_app(config), base_url=host).get("/cases").status_code == 200, host


def test_with_a_token_every_request_needs_it(config: Config, tmp_path: Path) -> None:
    token = "s3cret-token-0123456789abcdef"
    guarded = make_config(tmp_path, token=token)
    client = TestClient(create_app(guarded), base_url=LOCAL, follow_redirects=False)
    for url in ("/cases", f"/cases/{CASE}", "/api/cases", "/metrics", f"/cases/{CASE}/results.zip"):
        response = client.get(url)
        assert response.status_code == 401, url
        assert CASE not in response.text
    assert client.get("/cases", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/cases", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert client.get("/metrics", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    # A browser opens a link with ?token= once: the token moves into a cookie and out of the URL.
    first = client.get(f"/cases?status=failed&token={token}")
    assert first.status_code == 303 and first.headers["location"] == "/cases?status=failed"
    assert client.get("/cases?status=failed").status_code == 200


def test_a_trusted_proxy_header_lets_requests_in(config: Config, tmp_path: Path) -> None:
    proxied = make_config(tmp_path, trusted_proxy_header="X-Remote-User")
    client = TestClient(create_app(proxied), base_url=LOCAL)
    assert client.get("/cases").status_code == 401
    assert client.get("/cases", headers={"X-Remote-User": "physicist1"}).status_code == 200


def test_a_post_without_the_csrf_token_is_refused(config: Config) -> None:
    client = TestClient(create_app(config), base_url=LOCAL, follow_redirects=False)
    page = client.get(f"/cases/{CASE}")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token and client.cookies.get(CSRF_COOKIE) == token.group(1)
    assert client.post(f"/cases/{CASE}/retry").status_code == 403
    assert client.post(f"/cases/{CASE}/cancel", data={"csrf": "forged" * 8}).status_code == 403
    foreign = {"Origin": "https://evil.example"}
    forged = client.post(f"/cases/{CASE}/retry", data={"csrf": token.group(1)}, headers=foreign)
    assert forged.status_code == 403
    other = TestClient(
        create_app(config), base_url=LOCAL
    )  # another browser: its cookie is not this form's token
    other.get("/cases")
    assert other.post(f"/cases/{CASE}/retry", data={"csrf": token.group(1)}).status_code == 403
    # With the token the request reaches the action (which fails here: there is no cluster).
    allowed = client.post(f"/cases/{CASE}/retry", data={"csrf": token.group(1)})
    assert allowed.status_code == 409 and "retry failed:" in allowed.text


@pytest.mark.parametrize(
    "path",
    [
        "../secret.txt",
        "..%2Fsecret.txt",
        "%2E%2E/%2E%2E/outside.txt",
        "..%2F..%2Foutside.txt",
        "/etc/passwd",
        "%2Fetc%2Fpasswd",
        "nope.dcm",
    ],
)
def test_no_path_outside_the_case_results_can_be_downloaded(config: Config, path: str) -> None:
    client = TestClient(create_app(config), base_url=LOCAL)
    response = client.get(f"/cases/{CASE}/files/{path}")
    assert response.status_code == 404
    assert "another case" not in response.text and "not a result" not in response.text


def test_a_result_file_and_the_zip_are_the_right_bytes(config: Config) -> None:
    import io
    import zipfile

    client = TestClient(create_app(config), base_url=LOCAL)
    assert client.get(f"/cases/{CASE}/files/RD.beam1.dcm").content == DOSE
    archive = zipfile.ZipFile(io.BytesIO(client.get(f"/cases/{CASE}/results.zip").content))
    assert archive.namelist() == [f"{CASE}/RD.beam1.dcm"]
    assert archive.read(f"{CASE}/RD.beam1.dcm") == DOSE
    assert client.get("/cases/..%2F..%2Fetc/results.zip").status_code == 404


def test_security_headers_and_no_inline_script(config: Config) -> None:
    client = TestClient(create_app(config), base_url=LOCAL)
    for url in ("/cases", f"/cases/{CASE}", "/queue", f"/api/cases/{CASE}", "/metrics"):
        response = client.get(url)
        assert response.status_code == 200, url
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store"
        if response.headers["content-type"].startswith("text/html"):
            html = response.text
            assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline script"
            assert not re.search(r"\son[a-z]+=", html) and " style=" not in html
    static = client.get("/static/htmx.min.js")
    assert static.status_code == 200 and "no-store" not in static.headers["cache-control"]


def test_json_api_documents_carry_their_schema(config: Config) -> None:
    client = TestClient(create_app(config), base_url=LOCAL)
    assert client.get("/api/cases").json()["schema"] == "mqi.cases/1"
    case = client.get(f"/api/cases/{CASE}").json()
    assert case["schema"] == "mqi.status/1" and [b["number"] for b in case["beams"]] == [1, 2]
    history = client.get(f"/api/cases/{CASE}/history").json()
    assert history["schema"] == "mqi.history/1"
    assert [e["new"] for e in history["events"]][:3] == ["failed", "pending", "pending"]
    assert client.get("/api/queue").json()["schema"] == "mqi.queue/1"
    assert client.get("/api/cases/nope").status_code == 404
