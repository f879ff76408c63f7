"""/openapi.json describes the API the code serves: the same paths, methods and key fields."""

from __future__ import annotations

import re

KEY_FIELDS = {"id", "app_id", "description", "scopes", "status", "created_at", "expires_at", "revoked_at",
              "last_used_at", "display", "origin", "version"}
UNDOCUMENTED = {"/openapi.json", "/docs", "/docs/<path:filename>", "/docs/assets/<path:filename>", "/docs/migration",
                "/static/<path:filename>"}


def served_routes(flask_app) -> dict[str, set[str]]:
    routes: dict[str, set[str]] = {}
    for rule in flask_app.url_map.iter_rules():
        if rule.rule in UNDOCUMENTED or rule.endpoint.startswith("api-docs."):
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        routes.setdefault(path, set()).update(m.lower() for m in rule.methods - {"HEAD", "OPTIONS"})
    return routes


def test_every_served_route_is_documented_and_nothing_else(flask_app, client):
    spec = client.get("/openapi.json").json
    documented = {path: set(operations) - {"parameters"} for path, operations in spec["paths"].items()}
    assert documented == served_routes(flask_app)


def test_the_key_schema_has_the_contract_s_fields(client):
    schemas = client.get("/openapi.json").json["components"]["schemas"]
    assert set(schemas["Key"]["properties"]) == KEY_FIELDS
    assert set(schemas["KeyCreated"]["properties"]) == KEY_FIELDS | {"key"}


def test_error_responses_are_documented_with_the_envelope(client):
    spec = client.get("/openapi.json").json
    patch = spec["paths"]["/v2/keys/{key_id}"]["patch"]["responses"]
    assert {"400", "404", "409", "412"} <= set(patch)
    assert set(spec["components"]["schemas"]["Error"]["properties"]) == {"error", "request_id"}


def test_docs_page_is_served_with_its_own_assets(client):
    response = client.get("/docs")
    assert response.status_code == 200 and b"/docs/assets/swagger-ui-bundle.js" in response.data
    assert b"cdn" not in response.data.lower()
    script = client.get("/docs/assets/swagger-ui-bundle.js")
    assert script.status_code == 200 and len(script.data) > 100_000
