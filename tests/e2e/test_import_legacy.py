"""keyledger import-legacy: existing apps come over, whole lines or nothing, idempotently."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from tests.conftest import secrets_in_files
from tests.e2e.conftest import base_environment, run_cli


def write_apps(path: Path, count: int, broken: dict[int, str] | None = None) -> list[dict]:
    records = []
    with path.open("w") as out:
        for i in range(count):
            if broken and i in broken:
                out.write(broken[i] + "\n")
                continue
            record = {"app_id": f"app-{i}", "app_name": f"App {i}", "owner_email": f"owner{i % 7}@example.com",
                      "owner_name": f"Owner {i % 7}", "client_id": f"client-{i}",
                      "client_secret": secrets.token_urlsafe(30)}
            records.append(record)
            out.write(json.dumps(record) + "\n")
    return records


def test_import_brings_apps_over_once_and_skips_broken_lines(tmp_path, start_server):
    data = tmp_path / "var"
    env = base_environment(data)
    source = tmp_path / "apps.jsonl"
    secret_line = json.dumps({"app_id": "Bad Slug", "app_name": "x", "owner_email": "o@example.com",
                              "owner_name": "O", "client_id": "c-bad", "client_secret": "leakme-" + "x" * 20})
    records = write_apps(source, 120, broken={40: "{not json", 41: secret_line, 80: '["a list"]'})

    refused = run_cli(["import-legacy", str(source)], env)  # no store here yet: not made by accident
    assert refused.returncode == 2 and "--init" in refused.stderr and not data.exists()
    first = run_cli(["import-legacy", "--init", str(source)], env)
    assert first.returncode == 1, first.stderr  # some lines were refused
    assert "117 created, 0 already present, 3 refused" in first.stdout
    for number in (41, 42, 81):
        assert f"line {number}: refused" in first.stderr
    assert "app_id" in first.stderr.split("line 42: refused")[1].splitlines()[0]
    assert "leakme" not in first.stderr + first.stdout

    second = run_cli(["import-legacy", str(source)], env)
    assert "0 created, 117 already present, 3 refused" in second.stdout, second.stdout

    fixed = tmp_path / "fixed.jsonl"
    fixed.write_text("".join(json.dumps(r) + "\n" for r in records))
    third = run_cli(["import-legacy", str(fixed)], env)
    assert third.returncode == 0 and "nothing new to import" in third.stdout

    # What was imported works: each owner, its apps with a migration key, its legacy client.
    server = start_server(data_dir=data)
    admin = server.create_account("admin", "admin@example.com", "Admin")["token"]
    usage = server.get("/v2/legacy/usage", token=admin).json["apps"]
    assert len(usage) == 117 and {a["client_id"] for a in usage} == {r["client_id"] for r in records}
    owner = server.cli("accounts", "token", "--email", "owner3@example.com", "--json")
    apps = server.get("/v2/apps", token=owner["token"]).json["apps"]
    assert {a["id"] for a in apps} == {r["app_id"] for r in records if r["owner_email"] == "owner3@example.com"}
    keys = server.get(f"/v2/apps/{apps[0]['id']}/keys", token=owner["token"]).json["keys"]
    assert [(k["origin"], k["scopes"]) for k in keys] == [("migration", ["All"])]
    rolled = server.post(f"/v2/keys/{keys[0]['id']}/roll", {}, token=owner["token"]).json
    assert server.post("/v2/verify", {"key": rolled["key"]}).json["code"] == "VALID"
    plain = [r["client_secret"] for r in records]
    assert secrets_in_files(data, plain) == {}


def test_a_missing_file_is_a_clear_error(tmp_path):
    done = run_cli(["import-legacy", "--init", str(tmp_path / "nope.jsonl")], base_environment(tmp_path / "var"))
    assert done.returncode == 2 and "no such file" in done.stderr
    folder = run_cli(["import-legacy", "--init", str(tmp_path)], base_environment(tmp_path / "var"))
    assert folder.returncode == 2 and "is a directory" in folder.stderr
