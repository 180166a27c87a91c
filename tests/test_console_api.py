"""The console's API as a real `facegate admin` process on 127.0.0.1 over a real gallery and audit log: roles,
revocation, upload limits, CSRF/CORS rules, the decision log and live stream, reviews, snapshots, TLS."""

from __future__ import annotations

import ipaddress
import json
import ssl
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from conftest import need_shared
from console_process import TINY_PNG, ConsoleProcess, write_config
from daemon_process import KEY, facegate

from facegate.runtime.audit import AuditLog, read_audit
from facegate.runtime.decision import Decision
from facegate.runtime.events import build_payload
from facegate.signing import sign_payload

PHOTO = ("data", "enroll_examples", "single", "lin-manuel-miranda.png")
T0 = datetime(2026, 5, 4, 8, 0, tzinfo=UTC)


def decision_record(n: int, type_: str = "grant", door: str = "front", camera: str = "stage",
                    person: str | None = "Ada") -> dict:
    """A real signed payload of a ``Decision`` (as the daemon's emitter builds it), decided ``n`` minutes after T0."""
    at = T0 + timedelta(minutes=n)
    d = Decision(type_, camera, door, n, at, at, identity_id=7 if person else None, identity_name=person,
                 score=0.3, margin=0.2 if person else None, frames_used=3,
                 reason="not_in_group" if type_ == "deny" else None)
    return {"logged_at": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "topic": f"fg/{door}/event",
            "event": sign_payload(build_payload(d, event_id=str(uuid.uuid4())), KEY.encode())}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A console with one token per role and 30 decisions in the audit log (the daemon's records, appended with
    the daemon's own writer)."""
    tmp = tmp_path_factory.mktemp("console")
    config = write_config(tmp, {"doors": [{"id": "front"}, {"id": "back"}],
                                "snapshots": {"enabled": True},
                                "admin": {"max_upload_bytes": 2_000_000, "max_upload_files": 2}})
    with AuditLog(tmp / "audit.jsonl") as audit:
        for n in range(30):
            audit.append(decision_record(n, ("grant", "deny", "unknown")[n % 3], ("front", "back")[n % 2],
                                         person=None if n % 3 == 2 else ("Ada" if n % 4 else "Grace")))
    console = ConsoleProcess(config)
    tokens = {role: console.token(role + "-1", role) for role in ("viewer", "operator", "admin")}
    console.start()
    try:
        yield console, tokens, tmp
    finally:
        console.stop()


def test_every_api_route_needs_a_token(site):
    console, tokens, _ = site
    with console.client(tokens["viewer"]) as c:
        schema = c.get("/api/openapi.json").json()
    with console.client() as anonymous, console.client("fgt_" + "x" * 43) as forged:
        for path, ops in schema["paths"].items():
            if not path.startswith("/api"):
                continue
            url = path.replace("{identity_id}", "1").replace("{event_id}", str(uuid.uuid4()))
            for method in ops:
                for client in (anonymous, forged):
                    answer = client.request(method.upper(), url)
                    assert answer.status_code == 401, f"{method} {path}: {answer.status_code} {answer.text}"
                    assert answer.headers["www-authenticate"] == "Bearer"
        assert anonymous.get("/healthz").json() == {"status": "ok"}
        assert anonymous.get("/").status_code == 200  # the page itself holds no data


def test_roles(site):
    console, tokens, _ = site
    with console.client(tokens["viewer"]) as viewer, console.client(tokens["operator"]) as operator:
        assert viewer.get("/api/identities").status_code == 200
        refused = viewer.post("/api/identities", data={"name": "X"}, files=[("photos", ("a.png", TINY_PNG))])
        assert refused.status_code == 403 and "operator role" in refused.json()["detail"]
        assert operator.delete("/api/identities/1").status_code == 403
        assert operator.post("/api/gallery/compact").status_code == 403
        assert operator.get("/api/activity").status_code == 403
        event_id = viewer.get("/api/decisions").json()["decisions"][0]["event"]["event_id"]
        assert viewer.post(f"/api/decisions/{event_id}/review", json={"verdict": "wrong"}).status_code == 403
        assert viewer.get(f"/api/decisions/{event_id}/snapshot").status_code == 403


def test_a_revoked_token_is_refused_by_the_running_console(site):
    console, _, _ = site
    token = console.token("temp", "admin")
    with console.client(token) as c:
        assert c.get("/api/status").json()["token"] == {"name": "temp", "role": "admin"}
        run = facegate("admin", "token", "revoke", "temp", "--config", str(console.config))
        assert run.returncode == 0, run.stderr
        assert c.get("/api/status").status_code == 401


def test_upload_limits(site):
    console, tokens, _ = site
    with console.client(tokens["operator"]) as c:
        def post(files, **data):
            return c.post("/api/identities", data={"name": "Limits", **data}, files=files)

        wrong = post([("photos", ("face.png", b"GIF89a" + b"\0" * 100, "image/png"))])
        assert wrong.status_code == 415 and "'face.png' is not a JPEG, PNG, WebP or BMP" in wrong.json()["detail"]
        big = post([("photos", ("big.png", TINY_PNG + b"\0" * 2_000_000, "image/png"))])
        assert big.status_code == 413 and "larger than 2000000 bytes" in big.json()["detail"]
        many = post([("photos", (f"{i}.png", TINY_PNG, "image/png")) for i in range(3)])
        assert many.status_code == 413 and "at most 2" in many.json()["detail"]
        empty = post([("photos", ("e.png", b"", "image/png"))])
        assert empty.status_code == 400
        huge = c.post("/api/identities", content=b"x" * (2 * 2_000_000 + (1 << 20) + 1),
                      headers={"Content-Type": "multipart/form-data; boundary=b"})
        assert huge.status_code == 413 and "request body" in huge.json()["detail"]

        def chunks():
            yield b"--b\r\n"

        chunked = c.post("/api/identities", content=chunks(), headers={"Content-Type": "multipart/form-data; "
                                                                                      "boundary=b"})
        assert chunked.status_code == 411
        refused = post([("photos", ("tiny.png", TINY_PNG, "image/png"))])  # passes the limits, not the gates
        assert refused.status_code == 200
        assert refused.json()["results"][0] == {"file": "tiny.png", "status": "refused", "reason": "no face found",
                                                "quality": {"faces": 0}, "template_id": None}
        assert refused.json()["identity"] is None


def test_cross_site_requests_are_refused_and_cors_is_closed(site):
    console, tokens, _ = site
    with console.client(tokens["admin"]) as c:
        forged = c.post("/api/gallery/compact", headers={"Origin": "https://evil.example"})
        assert forged.status_code == 403 and "cross-origin POST" in forged.json()["detail"]
        same = c.post("/api/gallery/compact", headers={"Origin": console.url})
        assert same.status_code == 200
        preflight = c.options("/api/gallery/compact", headers={"Origin": "https://evil.example",
                                                                "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in preflight.headers
        read = c.get("/api/status", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in read.headers  # a foreign page cannot read the answer
    with console.client() as anonymous:  # a cookie is no credential: there is no session to ride on
        answer = anonymous.get("/api/status", headers={"Cookie": f"token={tokens['admin']}"})
        assert answer.status_code == 401 and "set-cookie" not in answer.headers
    page = httpx.get(console.url + "/")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"


def test_configured_cors_origins_are_the_only_ones_allowed(tmp_path):
    config = write_config(tmp_path, {"admin": {"cors_origins": ["https://ops.example:8443"]}})
    console = ConsoleProcess(config)
    token = console.token("ops", "viewer")
    console.start()
    try:
        with console.client(token) as c:
            ok = c.options("/api/status", headers={"Origin": "https://ops.example:8443",
                                                    "Access-Control-Request-Method": "GET",
                                                    "Access-Control-Request-Headers": "authorization"})
            assert ok.headers["access-control-allow-origin"] == "https://ops.example:8443"
            assert "access-control-allow-credentials" not in ok.headers
            other = c.options("/api/status", headers={"Origin": "https://evil.example",
                                                       "Access-Control-Request-Method": "GET"})
            assert "access-control-allow-origin" not in other.headers
    finally:
        console.stop()


def test_decision_log_filters_and_pages(site):
    console, tokens, _ = site
    with console.client(tokens["viewer"]) as c:
        page = c.get("/api/decisions", params={"limit": 7}).json()
        assert [r["seq"] for r in page["decisions"]] == list(range(29, 22, -1)) and page["next_before"] == 23
        seen = [r["seq"] for r in page["decisions"]]
        while page["next_before"] is not None:
            page = c.get("/api/decisions", params={"limit": 7, "before": page["next_before"]}).json()
            seen += [r["seq"] for r in page["decisions"]]
        assert seen == list(range(29, -1, -1))
        grants = c.get("/api/decisions", params={"type": "grant", "door": "back", "limit": 500}).json()["decisions"]
        assert {(r["event"]["type"], r["event"]["door"]) for r in grants} == {("grant", "back")}
        assert [r["seq"] for r in grants] == [n for n in range(29, -1, -1) if n % 3 == 0 and n % 2 == 1]
        window = c.get("/api/decisions", params={"since": "2026-05-04T08:10:00Z", "until": "2026-05-04T10:15:00+02:00",
                                                 "limit": 500}).json()["decisions"]
        assert [r["seq"] for r in window] == list(range(14, 9, -1))
        grace = c.get("/api/decisions", params={"person": "Grace"}).json()["decisions"]
        assert grace and all(r["event"]["person_name"] == "Grace" for r in grace)
        naive = c.get("/api/decisions", params={"since": "2026-05-04T08:10:00"})
        assert naive.status_code == 422 and "since" in naive.text  # no offset: an unknown time
        misspelt = c.get("/api/decisions", params={"tpye": "grant"})
        assert misspelt.status_code == 422 and "tpye" in misspelt.text
        # a repeated parameter was read as its last copy, hiding an invalid first one (Schemathesis found it)
        for path in ("/api/decisions", "/api/decisions/stream"):
            twice = c.get(path, params=[("camera", "\U000e63e6"), ("camera", "null")])
            assert twice.status_code == 422 and "'camera' given more than once" in twice.text, path


def test_a_review_is_audited_with_the_token_and_shown(site):
    console, tokens, tmp = site
    with console.client(tokens["operator"]) as c:
        event = c.get("/api/decisions", params={"type": "grant"}).json()["decisions"][0]["event"]
        answer = c.post(f"/api/decisions/{event['event_id']}/review",
                        json={"verdict": "wrong", "note": "this was not Ada, it was Grace"})
        assert answer.status_code == 200, answer.text
        shown = c.get(f"/api/decisions/{event['event_id']}").json()
        assert [(r["verdict"], r["token"], r["note"]) for r in shown["reviews"]] == \
            [("wrong", "operator-1", "this was not Ada, it was Grace")]
        assert c.post(f"/api/decisions/{uuid.uuid4()}/review", json={"verdict": "wrong"}).status_code == 404
        assert c.post(f"/api/decisions/{event['event_id']}/review", json={"verdict": "maybe"}).status_code == 422
    admin = [r["admin"] for r in read_audit(tmp / "audit.jsonl") if "admin" in r]
    assert {"action": "decision.review", "token": "operator-1", "target": event["event_id"]}.items() <= \
        admin[-1].items()


def test_the_live_stream_follows_the_audit_log(site):
    console, tokens, tmp = site
    got: list[str] = []
    ready = threading.Event()

    def listen() -> None:
        with console.client(tokens["viewer"]) as c, c.stream("GET", "/api/decisions/stream",
                                                             params={"door": "back"}) as answer:
            assert answer.headers["content-type"].startswith("text/event-stream")
            for line in answer.iter_lines():
                ready.set()
                if line.startswith("data: "):
                    got.append(line)
                    return

    reader = threading.Thread(target=listen, daemon=True)
    reader.start()
    assert ready.wait(10)
    time.sleep(0.5)
    with AuditLog(tmp / "audit.jsonl") as audit:  # as the daemon appends them
        audit.append(decision_record(100, "grant", "front"))  # filtered out
        audit.append(decision_record(101, "deny", "back"))
    reader.join(10)
    assert got, "no event on the stream"
    record = json.loads(got[0][len("data: "):])
    assert record["event"]["door"] == "back" and record["event"]["type"] == "deny" and record["seq"] >= 31


def test_snapshots_are_served_to_operators_only_when_kept(site):
    console, tokens, tmp = site
    with console.client(tokens["operator"]) as c:
        event_id = c.get("/api/decisions").json()["decisions"][0]["event"]["event_id"]
        assert c.get(f"/api/decisions/{event_id}/snapshot").status_code == 404
        folder = tmp / "state" / "snapshots"
        folder.mkdir(parents=True, exist_ok=True)
        jpeg = need_shared("data", "enroll_examples", "single", "obama-240p.jpg").read_bytes()
        (folder / f"{event_id}.jpg").write_bytes(jpeg)
        answer = c.get(f"/api/decisions/{event_id}/snapshot")
        assert answer.status_code == 200 and answer.content == jpeg
        assert answer.headers["content-type"] == "image/jpeg"
        assert c.get(f"/api/decisions/{event_id}").json()["snapshot"] is True
        assert c.get("/api/decisions/..%2F..%2Fetc%2Fpasswd/snapshot").status_code in (404, 422)


def test_people_enrol_rename_groups_remove_are_audited(site):
    console, tokens, tmp = site
    photo = need_shared(*PHOTO).read_bytes()
    with console.client(tokens["operator"]) as op, console.client(tokens["admin"]) as admin:
        enrolled = op.post("/api/identities", data={"name": "Lin-Manuel Miranda", "groups": ["staff", "cast"]},
                           files=[("photos", ("lmm.png", photo, "image/png"))])
        assert enrolled.status_code == 200, enrolled.text
        report = enrolled.json()
        assert report["enrolled"] == 1 and report["results"][0]["quality"]["inter_eye_px"] > 40
        ident = report["identity"]
        assert ident["groups"] == ["cast", "staff"] and ident["templates"] == 1
        again = op.post(f"/api/identities/{ident['id']}/photos", files=[("photos", ("same.png", photo))]).json()
        assert again["skipped"] == 1 and again["results"][0]["status"] == "skipped"
        renamed = op.patch(f"/api/identities/{ident['id']}", json={"name": "L.-M. Miranda", "groups": ["staff"]})
        assert renamed.status_code == 200 and renamed.json()["name"] == "L.-M. Miranda"
        assert op.patch(f"/api/identities/{ident['id']}", json={"name": "bad\nname"}).status_code == 400
        assert op.patch(f"/api/identities/{ident['id']}", json={"colour": "red"}).status_code == 422
        assert op.get("/api/identities/999999").status_code == 404
        removed = admin.delete(f"/api/identities/{ident['id']}", params={"compact": "true"})
        assert removed.status_code == 200 and removed.json()["compact"]["identities"] == 0
        assert admin.get("/api/identities").json()["identities"] == []
        activity = [a["action"] for a in admin.get("/api/activity").json()["actions"]]
    assert activity[:3] == ["identity.remove", "identity.update", "identity.enrol"]
    admin_records = [r["admin"] for r in read_audit(tmp / "audit.jsonl") if "admin" in r]
    enrol = next(a for a in admin_records if a["action"] == "identity.enrol")
    assert enrol["token"] == "operator-1" and enrol["target"]["name"] == "Lin-Manuel Miranda"
    remove = next(a for a in admin_records if a["action"] == "identity.remove")
    assert remove["token"] == "admin-1" and remove["compact"] is True


def test_plain_http_on_the_network_is_refused(tmp_path):
    config = write_config(tmp_path, {"admin": {"listen": "0.0.0.0"}})
    run = facegate("admin", "--config", str(config), timeout=60)
    assert run.returncode == 2
    assert run.stderr.splitlines()[-1].startswith("facegate: error: admin.listen 0.0.0.0: plain HTTP on a network")


def test_a_port_in_use_is_a_clear_error(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        config = write_config(tmp_path, {"admin": {"port": taken.getsockname()[1]}})
        run = facegate("admin", "--config", str(config), timeout=60)
    assert run.returncode == 2 and "cannot listen" in run.stderr and "Traceback" not in run.stderr


def test_https_with_the_configured_certificate(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    config = write_config(tmp_path, {"admin": {"tls": {"cert": "cert.pem", "key": "key.pem"}}})
    console = ConsoleProcess(config)
    token = console.token("tls", "viewer")
    console.start()
    try:
        answer = httpx.get(f"{console.url}/api/status", headers={"Authorization": f"Bearer {token}"},
                           verify=ssl.create_default_context(cafile=str(tmp_path / "cert.pem")))
        assert answer.status_code == 200 and answer.json()["token"]["name"] == "tls"
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{console.port}/healthz", timeout=5)  # no plain HTTP on the TLS port
    finally:
        console.stop()
