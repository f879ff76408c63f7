"""No secret issued during the test run appears in any audit row or export.

The scenario issues a secret of every kind (personal tokens, an app's default key, a user key,
a rolled key with its grace period), changes and revokes keys, signs a checkpoint; then reads
the whole trail every way there is — the audit view's rows themselves, every page, both HTTP
exports, the command-line export in both formats, key histories — and looks for every secret
issued so far in the run (``ISSUED_SECRETS``), not only this test's.
"""

from __future__ import annotations

import json

from service.cli import main
from tests.backend import point_environment_at, view_rows
from tests.conftest import ISSUED_SECRETS, Caller, secrets_in


def test_no_secret_in_any_audit_row_or_export(system, settings, client, admin, auditor, monkeypatch,
                                              capsys, tmp_path):
    dev = admin.post("/v2/accounts", json={"email": "dev@example.com", "name": "Dev", "role": "owner"}).json
    dev = Caller(client, dev["token"], id=dev["id"], role="owner")
    app = dev.post("/v2/apps", json={"id": "leaky", "name": "Leaky"}).json
    key = dev.post("/v2/apps/leaky/keys", json={"description": "user key", "scopes": ["Predict"]}).json
    rolled = dev.post(f"/v2/keys/{key['id']}/roll", json={"grace_seconds": 3600}).json
    dev.patch(f"/v2/keys/{key['id']}", json={"scopes": ["Predict", "Search"]})
    dev.delete(f"/v2/keys/{app['default_key']['id']}")
    dev.delete(f"/v2/keys/{key['id']}")
    system.sign_checkpoint()
    issued = list(ISSUED_SECRETS)
    assert {admin.token, dev.token, app["default_key"]["key"], key["key"], rolled["key"]} <= set(issued)

    # The audit view's rows, as stored.
    rows = view_rows(settings, "SELECT * FROM audit_events")
    assert len(rows) == system.keys_app.last_position()
    assert not secrets_in(repr(rows), issued)

    # Every way of reading the trail over HTTP.
    readers = {"events": [], "exports": []}
    cursor = None
    while True:
        page = auditor.get("/v2/audit/events?limit=2" + (f"&cursor={cursor}" if cursor else ""))
        readers["events"].append(page.get_data(as_text=True))
        cursor = page.json["next_cursor"]
        if cursor is None:
            break
    for path in ("/v2/audit/events.jsonl", "/v2/audit/events.csv", "/v2/audit/events.jsonl?app_id=leaky",
                 f"/v2/keys/{key['id']}/history", "/v2/audit/access?app_id=leaky&scope=Predict",
                 "/v2/audit/integrity", "/v2/audit/public-key"):
        response = auditor.get(path)
        assert response.status_code == 200, path
        readers["exports"].append(response.get_data(as_text=True))
    exported = "\n".join(readers["exports"])
    assert str(system.keys_app.last_position()) in exported
    assert not secrets_in("\n".join(readers["events"]), issued)
    assert not secrets_in(exported, issued)

    # The command-line export, to standard output and to a file, in both formats.
    system.close()
    point_environment_at(monkeypatch, settings.data_dir)
    monkeypatch.setenv("KEYLEDGER_PEPPER", settings.pepper)
    for fmt in ("jsonl", "csv"):
        assert main(["audit", "export", "--format", fmt]) == 0
        out = capsys.readouterr().out
        assert out.count("\n") >= len(rows)
        assert not secrets_in(out, issued)
        target = tmp_path / f"audit.{fmt}"
        assert main(["audit", "export", "--format", fmt, "--output", str(target)]) == 0
        assert target.read_bytes().decode("utf-8") == out
    assert main(["audit", "export", "--actor", f"account:{dev.id}", "--type", "ApiKey.Rolled",
                 "--since", "2000-01-01T00:00:00Z"]) == 0
    assert [json.loads(line)["key_id"] for line in capsys.readouterr().out.splitlines()] == [key["id"]]
