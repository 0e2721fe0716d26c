#!/usr/bin/env python3
"""Writes the hand-made seed inputs of each fuzz target into corpus/<target>/ (see README.md).

Run from fuzz/: `python3 seeds/make_seeds.py`. Seeds are small, built here from the repository's
deploy/ examples and sample records, so a fresh checkout can re-create them.
"""
import hashlib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TENANT = "00000000-0000-0000-0000-000000000001"
BASE = "https://manage.office.com"


def put(target, data):
    folder = os.path.join(HERE, "..", "corpus", target)
    os.makedirs(folder, exist_ok=True)
    name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def samples():
    out = []
    for name in ("microsoft-docs-sample-response.jsonl", "panther-labeled-tests.jsonl"):
        path = os.path.join(ROOT, "..", "shared", "samples", name)
        if os.path.exists(path):
            with open(path, "rb") as f:
                out += [line.strip() for line in f if line.strip().startswith(b"{")]
    if not out:
        out = [b'{"Id":"a1","Workload":"Exchange","CreationTime":"2024-05-01T10:11:12","RecordType":2}']
    return out


def split_seeds():
    recs = samples()
    small = [r for r in recs if len(r) < 1500][:4] or recs[:2]
    for mode in (0, 7, 200):
        put("split", bytes([mode, 0]) + b"[" + b",".join(small) + b"]")
    put("split", bytes([0, 16]) + b"[" + small[0] + b"," + small[0] + b"]")
    put("split", b"\x03\x00\xef\xbb\xbf [ {\"Id\": 7}, \"x\", 12, [1,{}], {\"Id\":\"\\u00e9\\\"\"}, ] x")
    put("split", b"\x05\x00[{\"Id\":\"a\"}} , tru, {\"A\":[{]}], {\"Id\":null}, {\"Id\":\"b\"")
    put("split", b"\x00\x00<html>error</html>")


def config_seeds():
    for name, mode in (("devo-template.json", 0), ("devo-template.yaml", 1), ("example.yaml", 1)):
        path = os.path.join(ROOT, "deploy", name)
        if os.path.exists(path):
            with open(path, "rb") as f:
                put("config", bytes([mode]) + f.read())
    inline = {
        "tenants": [{
            "name": "t", "tenant_id": TENANT, "client_id": "c",
            "auth": {"type": "certificate", "cert_file": "c.pem", "key_file": {"file": "k.pem"}},
            "cloud": {"api_base": "http://127.0.0.1:1", "authority_base": "http://127.0.0.1:1",
                      "resource": "http://127.0.0.1:1"},
        }],
        "kafka": {"properties": {"sasl.password": {"env": "X"}}},
        "devo": {"type": "devo_http", "endpoint": "https://h", "domain": "d", "token": "t"},
        "logging": {"level": "trace"},
    }
    put("config", b"\x00" + json.dumps(inline).encode())
    put("config", b"\x03kafka:\n  bootstrap_servers: a:1\ndevo: {type: stdout}\n")


def token_seeds():
    jwt = b"eyJhbGciOiJub25lIn0.eyJyb2xlcyI6WyJBY3Rpdml0eUZlZWQuUmVhZCJdfQ.c2ln"
    put("token_response", b"\x00\x00" + b'{"token_type":"Bearer","expires_in":3599,"access_token":"' + jwt + b'"}')
    put("token_response", b"\x01\x00" + b'{"token_type":"Bearer","expires_in":"3599","ext_expires_in":"3599","access_token":"abc"}')
    put("token_response", b"\x04\x00" + b'{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.","error_codes":[7000215]}')
    put("token_response", b"\x05\x00" + b'{"error":"unauthorized_client","error_description":"AADSTS700016: app not found","error_codes":[700016]}')
    put("token_response", b"\x06\x01" + b"<html><body>Service unavailable</body></html>")


def listing_seeds():
    feed = f"{BASE}/api/v1.0/{TENANT}/activity/feed"
    blob = {
        "contentType": "Audit.General",
        "contentId": "20240501101112345678901234567890$20240501111112345678901234567890$audit_general$Audit_General$na0001",
        "contentUri": f"{feed}/audit/20240501101112345678901234567890$x",
        "contentCreated": "2024-05-01T10:11:12.345Z",
        "contentExpiration": "2024-05-08T10:11:12.345Z",
    }
    body = json.dumps([blob, dict(blob, contentCreated="2024-05-01T10:11:12")]).encode()
    put("listing", b"NextPageUri: " + f"{feed}/subscriptions/content?contentType=Audit.General&nextPage=2024x".encode() + b"\n\n" + body)
    put("listing", b"nextpageurl: /api/v1.0/" + TENANT.encode() + b"/activity/feed/subscriptions/content?nextPage=1\n\n[]")
    put("listing", b"NextPageUri: https://evil.example/api/v1.0/x\n\n" + body)
    put("listing", b'{"error":{"code":"AF20022","message":"No subscription found for the specified content type"}}')
    put("listing", b'{"Message":"Authorization has been denied for this request."}')


def main():
    split_seeds()
    config_seeds()
    token_seeds()
    listing_seeds()
    return 0


if __name__ == "__main__":
    sys.exit(main())
