"""Apps and their keys, for owners (auditors and admins read them too).

Every view calls the use case the API's view for the same thing calls, with the same Actor and
RequestInfo, then ``system.after_command()``. A secret is only ever in the body of the one
response that made it (never in a URL, a redirect or a log), marked ``Cache-Control: no-store``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Response, redirect, request, url_for

from service.api import context
from service.console import usage
from service.console.limits import PERIODS, limit_rows
from service.console.web import actor, bp, field_errors, page, signed_in, system
from service.credentials import redact
from service.domain.errors import KeyledgerError
from service.domain.restrictions import DESCRIPTIONS, KINDS
from service.domain.scopes import ALL, PRESETS

GRACE_CHOICES = ((0, "None: the old secret stops at once"), (3600, "1 hour"), (86400, "24 hours"),
                 (604800, "7 days (the longest)"))
PRESET_CHOICES = (("read_only", "Read-only: Predict and Search"), ("all", "All scopes, including future ones"),
                  ("custom", "Choose scopes below"))
DONE = {"scopes": "Saved: the key's scopes and description are as shown.",
        "revoked": "Revoked: the key no longer verifies.",
        "limits": "Saved: the rate limits are as shown.",
        "restrictions": "Saved: who may use the key is as shown (in force at once)."}
EVENT_NAMES = {"ApiKey.Issued": "Created", "ApiKey.ScopesChanged": "Scopes changed",
               "ApiKey.DescriptionChanged": "Description changed", "ApiKey.Rolled": "Secret rolled",
               "ApiKey.Revoked": "Revoked", "ApiKey.LimitsChanged": "Rate limits changed",
               "ApiKey.Restricted": "Restriction changed", "ApiKey.Leaked": "Reported leaked",
               "ApiKey.Expiring": "Owner reminded of its expiry", "ApiKey.Expired": "Expired"}


def scope_groups() -> list[tuple[str, list[tuple[str, str]]]]:
    """The catalogue for checkboxes, grouped by resource (``Models:Add`` under Models); ``All``
    is a preset, not a box."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for name, description in system().keys_app.scope_catalogue().items():
        if name == ALL:
            continue
        resource = name.split(":")[0] if ":" in name else "Predictions and search"
        groups.setdefault(resource, []).append((name, description))
    return list(groups.items())


def preset_of(scopes: list[str]) -> str:
    if scopes == [ALL]:
        return "all"
    if sorted(scopes) == sorted(PRESETS["read_only"]):
        return "read_only"
    return "custom"


def chosen_scopes() -> list[str]:
    preset = request.form.get("preset", "custom")
    if preset == "all":
        return [ALL]
    if preset == "read_only":
        return list(PRESETS["read_only"])
    return request.form.getlist("scope")


def scope_form_values(scopes: list[str]) -> dict[str, Any]:
    return {"groups": scope_groups(), "presets": PRESET_CHOICES, "preset": preset_of(scopes),
            "ticked": set(scopes) if scopes != [ALL] else set(),
            "preset_scopes": {"read_only": " ".join(PRESETS["read_only"]),
                              "all": " ".join(n for g in scope_groups() for n, _ in g[1])}}


def secret_page(title: str, key: dict, secret: str, app: dict) -> Response:
    response = page("console/secret.html", status=200, title=title, key=key, secret=secret, app=app)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


def legacy_of(app_ids: list[str] | None = None, owner_id: str | None = None) -> dict[str, dict]:
    """Per app id, its legacy OAuth2 usage (apps without legacy credentials are absent)."""
    rows = system().legacy_usage.apps(owner_id=owner_id)
    return {row["app_id"]: row for row in rows if app_ids is None or row["app_id"] in app_ids}


# -- apps -------------------------------------------------------------------------------------

@bp.get("")
@bp.get("/")
@signed_in
def home() -> Response:
    keys_app = system().keys_app
    owner = keys_app.listing_owner(by=actor())
    apps = system().directory.apps(owner_id=owner)
    legacy = legacy_of(owner_id=owner)
    return page("console/apps.html", title="Apps" if owner else "All apps", apps=apps, legacy=legacy)


@bp.get("/apps/<app_id>")
@signed_in
def app_page(app_id: str, *, status: int = 200, errors: dict | None = None, message: str | None = None,
             limit_rows_shown: list | None = None) -> Response:
    sys = system()
    app = sys.keys_app.get_app(app_id, by=actor())  # NotFound for someone else's app
    keys = sys.directory.keys(app["id"], sys.keys_app.now())
    context.with_last_used(*keys)
    requests = usage.requests_last_day(sys, [k["id"] for k in keys])
    legacy = legacy_of([app["id"]], owner_id=app["owner_id"]).get(app["id"])
    from service.console.leaks import app_leaks

    leaks = app_leaks(sys, app["id"])
    done = DONE.get(request.args.get("done", "")) if request.method == "GET" else None
    return page("console/app.html", status=status, title=app["name"], app=app, keys=keys, legacy=legacy, requests=requests,
                can_change=not actor().is_auditor, errors=errors or {}, message=message, done=done,
                limit_rows=limit_rows_shown or limit_rows(app["limits"]), periods=PERIODS,
                leaks=leaks, leaked_ids={r["key_id"] for r in leaks})


@bp.route("/apps/<app_id>/keys/new", methods=["GET", "POST"])
@signed_in
def new_key(app_id: str) -> Response:
    sys = system()
    app = sys.keys_app.get_app(app_id, by=actor())
    errors: dict[str, list[str]] = {}
    message = None
    form = {"description": "", "expires_at": ""}
    scopes: list[str] = []
    restriction = {"kind": "none", "items": ""}
    if request.method == "POST":
        restriction = {"kind": request.form.get("restriction_kind", "none"),
                       "items": request.form.get("restriction_items", "")}
        form = {"description": request.form.get("description", ""),
                "expires_at": request.form.get("expires_at", "").strip()}
        shown = {"description": redact(form["description"]), "expires_at": redact(form["expires_at"])}
        scopes = chosen_scopes()
        expires_at, expiry_problem = parse_expiry(form["expires_at"])
        if expiry_problem:
            errors["expires_at"] = [expiry_problem]
            message = "The key was not created; see the field marked below."
        else:
            try:
                key, secret = sys.keys_app.issue_key(
                    app["id"], description=form["description"], scopes=scopes, expires_at=expires_at,
                    by=actor(), request=context.request_info(),
                    restrictions=restrictions_of_form(restriction["kind"], restriction["items"]))
            except KeyledgerError as error:
                if error.code in ("NOT_FOUND", "UNAVAILABLE"):
                    raise
                errors, message = field_errors(error), error.message
                for name in [n for n in errors if n.startswith("restrictions.")]:
                    errors.setdefault("restrictions", []).extend(errors.pop(name))
            else:
                sys.after_command()
                return secret_page("Your new API key", key, secret, app)
    else:
        shown = form
    # What was typed comes back for correction, but never a secret pasted by mistake.
    return page("console/key_new.html", status=400 if errors or message else 200,
                title="Create New API Key", app=app, form=shown, errors=errors, message=message,
                restriction={"kind": restriction["kind"], "items": redact(restriction["items"])},
                restriction_kinds=RESTRICTION_KINDS, **scope_form_values(scopes))


# The create-key form's restriction kinds: (value, label, the one-line explanation).
RESTRICTION_KINDS = [("none", "None", "anyone holding the key may use it (keep such keys on your servers)")] + [
    (kind, {"browser": "Web pages", "server": "Servers", "android": "Android apps", "ios": "iOS apps"}[kind],
     DESCRIPTIONS[kind]) for kind in KINDS]


def restrictions_of_form(kind: str, items: str) -> dict | str | None:
    """The restriction the form describes (the application judges it): one item per line;
    an Android line is the package and the fingerprint, separated by spaces or a comma."""
    if kind == "none":
        return None
    lines = [line.strip() for line in items.splitlines() if line.strip()]
    if kind == "android":
        pairs: list = []
        for line in lines:
            package, _, cert = line.replace(",", " ").partition(" ")
            pairs.append({"package": package, "sha256_cert": cert.strip()})
        return {kind: pairs}
    return {kind: lines}


def restriction_form_values(restrictions: dict | None) -> dict:
    """A key's restriction as the form shows it: its kind and one item per line."""
    if not restrictions:
        return {"kind": "none", "items": ""}
    (kind, items), = restrictions.items()
    lines = [f"{i['package']} {i['sha256_cert']}" if isinstance(i, dict) else i for i in items]
    return {"kind": kind, "items": "\n".join(lines)}


def parse_expiry(text: str) -> tuple[datetime | None, str | None]:
    """An optional expiry from the form (``2027-01-31T12:00``, read as UTC); the application
    judges whether it is acceptable (in the future, not too far)."""
    if not text:
        return None, None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None, "Give a date and time such as 2027-01-31T12:00 (UTC), or leave it empty."
    return (value if value.tzinfo else value.replace(tzinfo=UTC)), None


# -- one key ---------------------------------------------------------------------------------------

def _key_and_app(key_id: str) -> tuple[dict, dict]:
    sys = system()
    key = sys.keys_app.get_key(key_id, by=actor())  # NotFound for someone else's key
    context.with_last_used(key)
    return key, sys.keys_app.get_app(key["app_id"], by=actor())


def _timeline(key_id: str) -> list[dict]:
    sys = system()
    canonical = sys.keys_app.visible_key_id(key_id, by=actor())
    events = sys.audit.events(key_id=canonical, limit=None)
    names: dict[str, str] = {}
    for event in events:
        event["title"] = EVENT_NAMES.get(event["type"], event["type"])
        who = event["actor"]
        ref = f"{who['kind']}:{who['id']}"
        if ref not in names:
            names[ref] = _actor_name(who)
        event["who"] = names[ref]
    return events


def _actor_name(who: dict) -> str:
    """Who acted, as people read it. An owner sees their own name; other people's accounts only
    by id, as the API shows them (the security team sees every name)."""
    if who["kind"] == "account":
        if not (actor().reads_everything or who["id"] == actor().id):
            return f"account {who['id']}"
        try:
            account = system().keys_app.get_account(who["id"])
        except KeyledgerError:
            return f"account {who['id']}"
        return f"{account['name']} <{account['email']}> ({account['role']})"
    if who["kind"] == "system":
        return f"the system ({who['id']})"
    return f"{who['kind']} {who['id']}"


def key_page(key_id: str, *, status: int = 200, errors: dict | None = None, message: str | None = None,
             form_scopes: list[str] | None = None, description: str | None = None,
             limit_rows_shown: list | None = None, restriction: dict | None = None) -> Response:
    key, app = _key_and_app(key_id)
    done = DONE.get(request.args.get("done", "")) if request.method == "GET" else None
    return page("console/key.html", status=status, title=key["description"] or key["display"], key=key,
                app=app, events=_timeline(key["id"]), errors=errors or {}, message=message, done=done,
                grace_choices=GRACE_CHOICES, description=key["description"] if description is None else description,
                can_change=not actor().is_auditor and key["status"] == "active",
                limit_rows=limit_rows_shown or limit_rows(key["limits"]), periods=PERIODS,
                restriction=restriction or restriction_form_values(key["restrictions"]),
                restriction_kinds=RESTRICTION_KINDS, usage=usage.key_usage(system(), key["id"]),
                **scope_form_values(key["scopes"] if form_scopes is None else form_scopes))


@bp.get("/keys/<key_id>")
@signed_in
def key_detail(key_id: str) -> Response:
    return key_page(key_id)


def _version() -> int | None:
    raw = request.form.get("version", "")
    return int(raw) if raw.isdigit() and len(raw) < 18 else None


@bp.post("/keys/<key_id>/change")
@signed_in
def change_key(key_id: str) -> Response:
    sys = system()
    scopes = chosen_scopes()
    description = request.form.get("description", "")
    try:
        key = sys.keys_app.change_key(key_id, scopes=scopes, description=description, if_match=_version(),
                                      by=actor(), request=context.request_info())
    except KeyledgerError as error:
        if error.code in ("NOT_FOUND", "UNAVAILABLE"):
            raise
        return key_page(key_id, status=400 if error.code != "CONFLICT" else 409, errors=field_errors(error),
                        message=error.message, form_scopes=scopes, description=redact(description))
    sys.after_command()
    return redirect(url_for("console.key_detail", key_id=key["id"], done="scopes"), code=303)


@bp.post("/keys/<key_id>/restrictions")
@signed_in
def restrict_key(key_id: str) -> Response:
    sys = system()
    restriction = {"kind": request.form.get("restriction_kind", "none"),
                   "items": request.form.get("restriction_items", "")}
    try:
        key = sys.keys_app.change_key(
            key_id, restrictions=restrictions_of_form(restriction["kind"], restriction["items"]),
            if_match=_version(), by=actor(), request=context.request_info())
    except KeyledgerError as error:
        if error.code in ("NOT_FOUND", "UNAVAILABLE"):
            raise
        errors = field_errors(error)
        for name in [n for n in errors if n.startswith("restrictions.")]:
            errors.setdefault("restrictions", []).extend(errors.pop(name))
        return key_page(key_id, status=400 if error.code != "CONFLICT" else 409, errors=errors,
                        message=error.message,
                        restriction={"kind": restriction["kind"], "items": redact(restriction["items"])})
    sys.after_command()
    return redirect(url_for("console.key_detail", key_id=key["id"], done="restrictions"), code=303)


@bp.post("/keys/<key_id>/roll")
@signed_in
def roll_key(key_id: str) -> Response:
    sys = system()
    raw = request.form.get("grace_seconds", "0")
    try:
        grace = int(raw) if raw.isdigit() and len(raw) < 10 else -1
        key, secret = sys.keys_app.roll_key(key_id, grace_seconds=grace, if_match=_version(), by=actor(),
                                            request=context.request_info())
    except KeyledgerError as error:
        if error.code in ("NOT_FOUND", "UNAVAILABLE"):
            raise
        return key_page(key_id, status=400 if error.code != "CONFLICT" else 409, errors=field_errors(error),
                        message=error.message)
    sys.after_command()
    context.with_last_used(key)
    app = sys.keys_app.get_app(key["app_id"], by=actor())
    return secret_page("The key's new secret", key, secret, app)


@bp.route("/keys/<key_id>/revoke", methods=["GET", "POST"])
@signed_in
def revoke_key(key_id: str) -> Response:
    sys = system()
    key, app = _key_and_app(key_id)
    if request.method == "GET":
        return page("console/revoke.html", title=f"Revoke {key['description'] or key['display']}?",
                    key=key, app=app)
    sys.keys_app.revoke_key(key["id"], by=actor(), request=context.request_info())
    sys.after_command()
    return redirect(url_for("console.key_detail", key_id=key["id"], done="revoked"), code=303)
