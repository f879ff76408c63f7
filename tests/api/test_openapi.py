"""/openapi.json describes the API the code serves: the same paths, methods and key fields."""

from __future__ import annotations

import re

KEY_FIELDS = {"id", "app_id", "description", "scopes", "status", "created_at", "expires_at", "revoked_at",
              "last_used_at", "display", "origin", "version", "limits", "restrictions", "leaked_at", "leak"}
UNDOCUMENTED = {"/openapi.json", "/docs", "/docs/<path:filename>", "/docs/assets/<path:filename>", "/docs/migration",
                "/static/<path:filename>"}


def served_routes(flask_app) -> dict[str, set[str]]:
    routes: dict[str, set[str]] = {}
    for rule in flask_app.url_map.iter_rules():
        # The web console's pages (service.console) are HTML for people, not part of the API.
        if rule.rule in UNDOCUMENTED or rule.endpoint.startswith(("api-docs.", "console.")):
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


def operations(spec: dict):
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            if method != "parameters":
                yield path, method, operation


def test_no_operation_declares_422_the_server_answers_400(client):
    spec = client.get("/openapi.json").json
    # 422 is only ever a reused Idempotency-Key (tests/api/test_idempotency.py)
    assert [(p, m) for p, m, op in operations(spec)
            if "422" in op["responses"] and "IDEMPOTENCY_KEY_REUSED" not in op["responses"]["422"]["description"]] == []
    assert all("400" in op["responses"] for _, _, op in operations(spec) if "requestBody" in op)


def test_every_authenticated_operation_declares_401_and_403(client):
    spec = client.get("/openapi.json").json
    missing = [(p, m) for p, m, op in operations(spec)
               if op.get("security") and p != "/v2/token" and not {"401", "403"} <= set(op["responses"])]
    assert missing == []  # /v2/token has the OAuth2 errors instead (400 and 401, below)


def test_token_errors_are_documented_in_the_oauth2_shape(client):
    responses = client.get("/openapi.json").json["paths"]["/v2/token"]["post"]["responses"]
    for status in ("400", "401"):
        assert responses[status]["content"]["application/json"]["schema"]["$ref"].endswith("/OAuthError")


def test_if_match_is_declared_where_it_is_honoured(client):
    spec = client.get("/openapi.json").json
    with_if_match = {(p, m) for p, m, op in operations(spec)
                     if any(x["name"] == "If-Match" for x in op.get("parameters", []))}
    assert with_if_match == {("/v2/keys/{key_id}", "patch"), ("/v2/keys/{key_id}", "delete"),
                             ("/v2/keys/{key_id}/roll", "post")}


def test_the_document_is_as_strict_as_the_server_on_fields(client):
    schemas = client.get("/openapi.json").json["components"]["schemas"]
    assert schemas["AccountCreate"]["properties"]["email"]["format"] == "email"
    assert "Predict" in schemas["KeyCreate"]["properties"]["scopes"]["items"]["enum"]
    assert "Predict" in schemas["KeyChange"]["properties"]["scopes"]["items"]["enum"]
    assert schemas["KeyChange"]["minProperties"] == 1
    assert schemas["VerifyRequest"]["properties"]["key"]["minLength"] == 1
    for schema, field in (("AccountCreate", "name"), ("AppCreate", "name"), ("KeyCreate", "description")):
        pattern = schemas[schema]["properties"][field]["pattern"]
        assert not re.fullmatch(pattern, "a\nb") and re.fullmatch(pattern, "a b")


def test_new_resources_link_to_what_a_client_does_next(client):
    paths = client.get("/openapi.json").json["paths"]
    links = paths["/v2/apps/{app_id}/keys"]["post"]["responses"]["201"]["links"]
    assert {"GetKey", "ChangeKey", "RevokeKey", "RollKey", "KeyHistory"} <= set(links)


def test_the_document_stands_alone(client):
    """/openapi.json (and /docs, which shows it) is read without the repository: its introduction
    points at no file, and says how to authenticate, what gateways call and what an error looks like."""
    import re

    description = client.get("/openapi.json").json["info"]["description"]
    assert not re.search(r"\b[\w./-]+\.md\b", description), description  # no "See API.md"
    for needed in ("Authorization: Key pat_", "/v2/verify", "/v2/auth/check", '"error"', "request_id",
                   "UNAVAILABLE", "Retry-After", "/docs/migration"):
        assert needed in description, needed


def test_openapi_describes_limits_and_rate_limited(client):
    spec = client.get("/openapi.json").json
    schemas = spec["components"]["schemas"]
    assert set(schemas["Limit"]["properties"]) == {"limit", "per"}
    assert "limits" in schemas["App"]["properties"]
    assert "RATE_LIMITED" in schemas["VerifyResult"]["properties"]["code"]["enum"]
    assert "retry_after" in schemas["VerifyResult"]["properties"]
    assert "429" in spec["paths"]["/v2/auth/check"]["get"]["responses"]
    assert "patch" in spec["paths"]["/v2/apps/{app_id}"]
    for path, method in (("/v2/apps/{app_id}/keys", "post"), ("/v2/keys/{key_id}", "patch"),
                         ("/v2/apps/{app_id}", "patch")):
        body = spec["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
        name = body["$ref"].rsplit("/", 1)[-1]
        limits = schemas[name]["properties"]["limits"]
        assert limits["type"] == "array" and limits["items"] == {"$ref": "#/components/schemas/Limit"}
