"""Request and response schemas: they shape plain values, never aggregates."""

from __future__ import annotations

from datetime import UTC

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, validate, validates_schema

from projections.timefmt import rfc3339
from service.application import DESCRIPTION_MAX, MAX_GRACE_SECONDS, NAME_MAX
from service.domain.actors import ROLES
from service.domain.leaks import POLICIES
from service.domain.scopes import CATALOGUE

# What the application accepts as a name or description, said in the document: no control
# characters (the application also refuses credential-shaped text, which no pattern can say).
ONE_LINE = r"^[^\u0000-\u001f\u007f]*$"
NAMED = r"^[^\u0000-\u001f\u007f]*[^\s\u0000-\u001f\u007f][^\u0000-\u001f\u007f]*$"  # and not blank


class Rfc3339(fields.AwareDateTime):
    """RFC 3339 UTC: written with a trailing Z; read with any offset (none means UTC)."""

    def __init__(self, **kwargs):
        super().__init__(default_timezone=UTC, **kwargs)

    def _serialize(self, value, attr, obj, **kwargs):
        return rfc3339(value)


class StrictSchema(Schema):
    class Meta:
        unknown = RAISE


class PatchSchema(StrictSchema):
    """A PATCH body: every field optional, but at least one given (documented as minProperties by
    service.api.openapi); ``NOTHING_GIVEN`` says which."""

    NOTHING_GIVEN = "Give at least one field."

    @validates_schema
    def _says_something(self, data, **kwargs):
        if not data:
            raise ValidationError(self.NOTHING_GIVEN, "_schema")


def _name() -> fields.String:
    """A person's or an app's name: one line, not blank."""
    return fields.String(required=True, validate=validate.Length(min=1, max=NAME_MAX), metadata={"pattern": NAMED})


def _description(**kwargs) -> fields.String:
    """A key's description: one line, possibly empty."""
    return fields.String(validate=validate.Length(max=DESCRIPTION_MAX), metadata={"pattern": ONE_LINE}, **kwargs)


# -- errors ----------------------------------------------------------------------------

class ErrorBodySchema(Schema):
    code = fields.String(required=True, metadata={"example": "SCOPE_UNKNOWN"})
    message = fields.String(required=True)
    details = fields.Dict(required=True)


class ErrorSchema(Schema):
    error = fields.Nested(ErrorBodySchema, required=True)
    request_id = fields.String(required=True)


# -- accounts ---------------------------------------------------------------------------

class AccountCreateSchema(StrictSchema):
    email = fields.Email(required=True, validate=validate.Length(min=3, max=254))
    name = _name()
    role = fields.String(required=True, validate=validate.OneOf(ROLES))


class AccountSchema(Schema):
    id = fields.String(required=True)
    email = fields.String(required=True)
    name = fields.String(required=True)
    role = fields.String(required=True)
    created_at = Rfc3339()


class AccountCreatedSchema(AccountSchema):
    token = fields.String(required=True, metadata={"description": "The personal token; shown only in this response."})


# -- client restrictions (checked by service.domain.restrictions, which names the bad item) ------

_RESTRICTIONS_DOC = {
    "description": "Who may use the key: null (anyone) or one kind. browser: page patterns matched "
                   "against Origin, else Referer (https://app.example.com, https://*.example.com/*, "
                   "http://localhost:*); server: IPv4/IPv6 addresses and CIDR blocks; android: "
                   "{package, sha256_cert} pairs; ios: bundle ids.",
    "type": "object", "nullable": True, "minProperties": 1, "maxProperties": 1, "additionalProperties": False,
    "properties": {
        "browser": {"type": "array", "minItems": 1, "maxItems": 100,
                    "items": {"type": "string", "maxLength": 255, "pattern": r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s?#@\\]+$",
                              "example": "https://*.example.com/*"}},
        "server": {"type": "array", "minItems": 1, "maxItems": 100,
                   "items": {"type": "string", "maxLength": 255, "pattern": r"^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$",
                             "example": "203.0.113.0/24"}},
        "android": {"type": "array", "minItems": 1, "maxItems": 100, "items": {
            "type": "object", "required": ["package", "sha256_cert"], "additionalProperties": False,
            "properties": {"package": {"type": "string", "maxLength": 255, "example": "com.example.app",
                                       "pattern": r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+$"},
                           "sha256_cert": {"type": "string", "description": "SHA-256 signing-certificate "
                                           "fingerprint: 64 hex digits, colons allowed",
                                           "pattern": r"^([0-9A-Fa-f]{64}|[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){31})$"}}}},
        "ios": {"type": "array", "minItems": 1, "maxItems": 100,
                "items": {"type": "string", "maxLength": 255, "pattern": r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$",
                          "example": "com.example.app"}},
    },
    "example": {"browser": ["https://app.example.com", "https://*.example.com/*"]},
}


def restrictions_field(*, dump: bool = False) -> fields.Raw:
    return fields.Raw(allow_none=True, required=dump, metadata=_RESTRICTIONS_DOC)


# -- keys --------------------------------------------------------------------------------

class LimitSchema(Schema):
    limit = fields.Integer(required=True, metadata={"minimum": 1, "maximum": 1_000_000_000,
                                                    "description": "Verifications admitted per period."})
    per = fields.String(required=True, metadata={
        "pattern": "^[1-9][0-9]{0,7}[smhd]$", "example": "1m",
        "description": "The period: a whole number and a unit s, m, h or d (1s to 365d)."})


_LIMITS_DOC = ("Rate limits: at most 5, each period once; every verification counts against each. A key's limits "
               "are its own, an app's are shared by all its keys. Over a limit: RATE_LIMITED. [] for none.")


class Limits(fields.Raw):
    """A list of limits, checked by the application (service.domain.limits), so that every bad
    item is named as ``limits[i].field``; documented as an array of Limit."""

    def __init__(self, **kwargs) -> None:
        super().__init__(metadata={"type": "array", "items": {"$ref": "#/components/schemas/Limit"},
                                   "maxItems": 5, "description": _LIMITS_DOC}, **kwargs)


def _limits_held() -> fields.List:
    """A key's or an app's limits, as answered."""
    return fields.List(fields.Nested(LimitSchema), required=True, metadata={"description": _LIMITS_DOC})


class LeakSchema(Schema):
    url = fields.String(required=True)
    source = fields.String(required=True)


class KeySchema(Schema):
    id = fields.String(required=True)
    app_id = fields.String(required=True)
    description = fields.String(required=True)
    scopes = fields.List(fields.String(), required=True)
    status = fields.String(required=True, metadata={"enum": ["active", "revoked", "expired"]})
    created_at = Rfc3339(required=True)
    expires_at = Rfc3339(allow_none=True)
    revoked_at = Rfc3339(allow_none=True)
    last_used_at = Rfc3339(allow_none=True)
    display = fields.String(required=True, metadata={"example": "ak_…abcd"})
    origin = fields.String(required=True, metadata={"enum": ["user", "auto", "migration"]})
    version = fields.Integer(required=True)
    limits = _limits_held()
    restrictions = restrictions_field(dump=True)
    leaked_at = Rfc3339(allow_none=True, metadata={"description": "When the key was first reported leaked"})
    leak = fields.Nested(LeakSchema, metadata={"description": "The latest leak report: where it was found"})


class KeyCreatedSchema(KeySchema):
    key = fields.String(required=True, metadata={"description": "The secret; shown only in this response."})


class KeyListSchema(Schema):
    keys = fields.List(fields.Nested(KeySchema), required=True)


def _scopes(**kwargs) -> fields.List:
    return fields.List(
        fields.String(validate=validate.Length(min=1, max=100), metadata={"enum": list(CATALOGUE)}),
        validate=validate.Length(min=1, max=100, error="Give between 1 and 100 scopes."),
        metadata={"description": "Scopes from GET /v2/scopes, or [\"All\"]."}, **kwargs)


class KeyCreateSchema(StrictSchema):
    description = _description(required=True)
    scopes = _scopes(required=True)
    expires_at = Rfc3339(allow_none=True)
    limits = Limits()
    restrictions = restrictions_field()


class KeyChangeSchema(PatchSchema):
    NOTHING_GIVEN = "Give scopes, description, limits or several."

    description = _description()
    scopes = _scopes()
    limits = Limits()
    restrictions = restrictions_field()


class KeyRollSchema(StrictSchema):
    grace_seconds = fields.Integer(strict=True, load_default=0,
                                   validate=validate.Range(min=0, max=MAX_GRACE_SECONDS))


class AsOfSchema(StrictSchema):
    as_of = Rfc3339(metadata={"description": "Show the key as it stood at this time."})


# -- apps --------------------------------------------------------------------------------

class AppCreateSchema(StrictSchema):
    id = fields.String(validate=validate.Length(min=1, max=63),
                       metadata={"description": "A slug (lower-case letters, digits, hyphens); made from the name if left out."})
    name = _name()
    owner_id = fields.String(metadata={"description": "Admins only: the owner's account id."})


class AppSchema(Schema):
    id = fields.String(required=True)
    name = fields.String(required=True)
    owner_id = fields.String(required=True)
    created_at = Rfc3339(required=True)
    limits = _limits_held()
    leak_policy = fields.String(allow_none=True, metadata={
        "enum": [*POLICIES, None],
        "description": "What a leaked key of this app gets; null: the deployment's KEYLEDGER_LEAK_POLICY"})


class AppChangeSchema(PatchSchema):
    NOTHING_GIVEN = "Give limits, leak_policy or both."

    limits = Limits()
    leak_policy = fields.String(validate=validate.OneOf(POLICIES))


class AppCreatedSchema(AppSchema):
    default_key = fields.Nested(KeyCreatedSchema, required=True)


class AppListSchema(Schema):
    apps = fields.List(fields.Nested(AppSchema), required=True)


# -- audit-shaped history ------------------------------------------------------------------

class ActorSchema(Schema):
    kind = fields.String(required=True)
    id = fields.String(required=True)


class RequestInfoSchema(Schema):
    id = fields.String(allow_none=True)
    ip = fields.String(allow_none=True)
    user_agent = fields.String(allow_none=True)


class AuditEventSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    seq = fields.Integer(required=True)
    id = fields.String(required=True)
    type = fields.String(required=True)
    occurred_at = fields.String(required=True)
    actor = fields.Nested(ActorSchema, required=True)
    app_id = fields.String(allow_none=True)
    key_id = fields.String(allow_none=True)
    data = fields.Dict(required=True)
    request = fields.Nested(RequestInfoSchema, required=True)
    hash = fields.String(required=True)
    prev_hash = fields.String(required=True)


class HistorySchema(Schema):
    events = fields.List(fields.Nested(AuditEventSchema), required=True)


# -- the audit trail -------------------------------------------------------------------------

ACTOR_PATTERN = r"^(?:(?:account|key):[A-Za-z0-9-]{1,64}|system(?::[A-Za-z0-9._-]{1,64})?)$"
TYPE_PATTERN = r"^[A-Z][A-Za-z0-9]{0,63}\.[A-Z][A-Za-z0-9]{0,63}$"


def _one_line(value: str) -> None:
    if "\n" in value or "\r" in value:  # a pattern's "$" also matches before a final newline
        raise ValidationError("Must be one line.")


def _one_line_matching(pattern: str, error: str, **metadata) -> fields.String:
    return fields.String(validate=[validate.Regexp(pattern, error=error), _one_line], metadata=metadata)


class AuditFilterSchema(StrictSchema):
    app_id = fields.String(validate=validate.Length(min=1, max=63), metadata={"description": "Events of this app."})
    key_id = fields.String(validate=validate.Length(min=1, max=64), metadata={"description": "Events of this key."})
    actor = _one_line_matching(ACTOR_PATTERN, "Use account:<id>, key:<id> or system.",
                               description="Who did it: `account:<id>`, `key:<id>` or `system`.")
    type = _one_line_matching(TYPE_PATTERN, "Use an event type such as ApiKey.Revoked.",
                              description="An event type, e.g. `ApiKey.Revoked`.", example="ApiKey.Revoked")
    since = Rfc3339(metadata={"description": "Events at or after this time."})
    until = Rfc3339(metadata={"description": "Events before this time."})


class AuditQuerySchema(AuditFilterSchema):
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000),
                           metadata={"description": "Events per page, 1 to 1000."})
    cursor = fields.String(validate=validate.Length(min=1, max=100),
                           metadata={"description": "`next_cursor` of the previous page."})


class AuditPageSchema(HistorySchema):
    next_cursor = fields.String(allow_none=True, required=True,
                                metadata={"description": "Pass as `cursor` for the next page; null on the last."})


class IntegritySchema(Schema):
    ok = fields.Boolean(required=True)
    checked = fields.Integer(required=True, metadata={"description": "Stored events whose chain was recomputed."})
    first_bad_seq = fields.Integer(allow_none=True, required=True)
    reason = fields.String(allow_none=True, metadata={"description": "What was found at first_bad_seq."})
    checkpoints = fields.Integer(metadata={"description": "Signed checkpoints whose signature verified."})
    signed_through = fields.Integer(metadata={"description": "The last seq a verified checkpoint vouches for."})


class PublicKeySchema(Schema):
    algorithm = fields.String(required=True, metadata={"example": "Ed25519"})
    public_key_pem = fields.String(required=True)
    sha256 = fields.String(metadata={"description": "SHA-256 of the public key (DER); checkpoints name it."})


# The longest value /v2/verify takes for each of its fields (service.api.verify checks them by hand); the
# request's facts, those a key with a client restriction is judged by, are as long in the access query.
VERIFY_MAX = {"key": 1024, "scope": 100, "app_id": 100,
              "origin": 2048, "referrer": 2048, "ip": 64, "android_package": 255, "android_cert": 128,
              "ios_bundle_id": 255}


def _verify_string(name: str, description: str, **kwargs) -> fields.String:
    """A string no longer than /v2/verify takes it (in the access query, at least one character)."""
    minimum = kwargs.pop("min", None)
    return fields.String(validate=validate.Length(min=minimum, max=VERIFY_MAX[name]),
                         metadata={"description": description}, **kwargs)


class AccessQuerySchema(StrictSchema):
    app_id = fields.String(required=True, validate=validate.Length(min=1, max=63))
    scope = fields.String(required=True, validate=validate.Length(min=1, max=100),
                          metadata={"example": "Models:Add", "enum": list(CATALOGUE)})
    at = Rfc3339(metadata={"description": "The moment to answer for; now if left out."})
    # "…from origin O": a key whose client restriction refuses these facts is left out (one that
    # judges a fact not given here is listed: it could be used, from where it allows).
    origin = _verify_string("origin", "Only keys usable from this origin (browser keys are judged).", min=1)
    referrer = _verify_string("referrer", "Only keys usable from this page (browser keys are judged).", min=1)
    ip = fields.IP(metadata={"description": "Only keys usable from this client address (server keys are judged)."})
    android_package = _verify_string("android_package", "With android_cert: only keys usable by this Android app.", min=1)
    android_cert = _verify_string("android_cert", "The Android app's signing-certificate SHA-256 fingerprint.", min=1)
    ios_bundle_id = _verify_string("ios_bundle_id", "Only keys usable by this iOS app.", min=1)


class SecretHintSchema(Schema):
    display = fields.String(required=True, metadata={"example": "ak_…abcd"})
    valid_until = Rfc3339(allow_none=True, metadata={"description": "Expiry, or the end of a roll's grace period."})


class CredentialSchema(Schema):
    kind = fields.String(required=True, metadata={"enum": ["api_key", "access_token"]})
    restrictions = restrictions_field(dump=True)
    key_id = fields.String()
    client_id = fields.String()
    scopes = fields.List(fields.String(), required=True)
    secrets = fields.List(fields.Nested(SecretHintSchema),
                          metadata={"description": "The secrets that could be used then (never the secret itself)."})


class AccessSchema(Schema):
    app_id = fields.String(required=True)
    scope = fields.String(required=True)
    at = Rfc3339(required=True)
    credentials = fields.List(fields.Nested(CredentialSchema), required=True)
    # the facts asked about, echoed when given
    origin = fields.String()
    referrer = fields.String()
    ip = fields.String()
    android_package = fields.String()
    android_cert = fields.String()
    ios_bundle_id = fields.String()


# -- scopes and operations ---------------------------------------------------------------------

class ScopeSchema(Schema):
    name = fields.String(required=True)
    description = fields.String(required=True)


class ScopesSchema(Schema):
    scopes = fields.List(fields.Nested(ScopeSchema), required=True)
    presets = fields.Dict(keys=fields.String(), values=fields.List(fields.String()), required=True)


class HealthSchema(Schema):
    status = fields.String(required=True)


class AuditAlarmSchema(Schema):
    ok = fields.Boolean(required=True, metadata={"description": "false while tampering is known"})
    first_bad_seq = fields.Integer(allow_none=True, required=True)
    reason = fields.String(allow_none=True, required=True)


class ReadinessSchema(Schema):
    status = fields.String(required=True)
    store = fields.String(required=True)
    projections_lag = fields.Integer(required=True)
    audit = fields.Nested(AuditAlarmSchema, metadata={
        "description": "The audit chain as this process last found it: a stored record the service did not "
                       "write is never applied, and no checkpoint is signed over it (serving goes on)"})


# -- verification (documented here; the hot path validates by hand) -----------------------------

class VerifyRequestSchema(StrictSchema):
    key = _verify_string("key", "The API key or legacy access token to check.", min=1, required=True)
    scope = _verify_string("scope", "The scope the request needs, e.g. Predict (null: none).", allow_none=True)
    app_id = _verify_string("app_id", "The app the request is for; another app's key is APP_MISMATCH (null: any).",
                   allow_none=True)
    # The request's facts: a key with a client restriction is judged by them (missing: refused).
    origin = _verify_string("origin", "The request's Origin header (browser keys), e.g. https://app.example.com.",
                   allow_none=True)
    referrer = _verify_string("referrer", "The request's Referer header (browser keys; used when there is no origin).",
                     allow_none=True)
    ip = _verify_string("ip", "The client's IPv4 or IPv6 address (server keys).", allow_none=True)
    android_package = _verify_string("android_package", "The X-Android-Package header (Android keys).", allow_none=True)
    android_cert = _verify_string("android_cert", "The X-Android-Cert header: the app's signing-certificate SHA-256 "
                                         "fingerprint.", allow_none=True)
    ios_bundle_id = _verify_string("ios_bundle_id", "The X-Ios-Bundle-Identifier header (iOS keys).", allow_none=True)


class DeprecationSchema(Schema):
    deprecated_at = Rfc3339(required=True, metadata={"description": "Since when access tokens are deprecated."})
    sunset_at = Rfc3339(required=True, metadata={"description": "When access tokens stop working."})
    link = fields.String(required=True, metadata={"description": "The migration guide."})


class LegacyStatusSchema(Schema):
    code = fields.Integer(required=True, metadata={"example": 11001})
    description = fields.String(required=True)
    details = fields.String()



class VerifyResultSchema(Schema):
    valid = fields.Boolean(required=True)
    code = fields.String(required=True, metadata={"enum": [
        "VALID", "MALFORMED", "NOT_FOUND", "REVOKED", "EXPIRED", "INSUFFICIENT_SCOPE", "APP_MISMATCH",
        "LEGACY_TOKEN_SUNSET", "ORIGIN_NOT_ALLOWED", "IP_NOT_ALLOWED", "APP_NOT_ALLOWED", "RATE_LIMITED"]})
    kind = fields.String(allow_none=True, metadata={"enum": ["api_key", "access_token", "personal_token"]})
    key_id = fields.String(allow_none=True)
    app_id = fields.String(allow_none=True)
    scopes = fields.List(fields.String(), allow_none=True)
    expires_at = Rfc3339(allow_none=True)
    client_id = fields.String(allow_none=True, metadata={
        "description": "Legacy access tokens only: the OAuth2 client that holds it."})
    deprecation = fields.Nested(DeprecationSchema, metadata={
        "description": "Legacy access tokens only: when they stop working, and how to move to API keys."})
    retry_after = fields.Integer(metadata={
        "minimum": 1, "description": "RATE_LIMITED only: whole seconds after which a retry is admitted (the "
                                     "answer also carries Retry-After, RateLimit-Policy and RateLimit headers)."})
    status = fields.Nested(LegacyStatusSchema, metadata={
        "description": "Legacy access tokens only: the status object 2017-era clients read "
                       "(code 11001 with details 'expired token' tells them to fetch a new token)."})


# -- legacy OAuth2 ----------------------------------------------------------------------------

class LegacyCredentialsSchema(Schema):
    app_id = fields.String(required=True)
    client_id = fields.String(required=True)
    client_secret = fields.String(required=True, metadata={"description": "Shown only in this response."})
    created_at = Rfc3339(required=True)


class TokenRequestSchema(Schema):
    grant_type = fields.String(required=True, metadata={"enum": ["client_credentials"]})
    client_id = fields.String(metadata={"description": "Only when not sent with HTTP Basic."})
    client_secret = fields.String(metadata={"description": "Only when not sent with HTTP Basic."})
    scope = fields.String(metadata={"description": "Ignored: access tokens carry no scopes."})


class TokenSchema(Schema):
    access_token = fields.String(required=True)
    token_type = fields.String(required=True, metadata={"enum": ["Bearer"]})
    expires_in = fields.Integer(required=True, metadata={"description": "Seconds until the token expires."})
    scope = fields.String(required=True, metadata={"example": "api_access_write api_access api_access_read"})
    status = fields.Nested(LegacyStatusSchema, required=True)


class OAuthErrorSchema(Schema):
    error = fields.String(required=True, metadata={"enum": [
        "invalid_request", "invalid_client", "unsupported_grant_type", "unauthorized_client"]})
    error_description = fields.String(required=True)
    status = fields.Nested(LegacyStatusSchema, required=True)
    request_id = fields.String(required=True)


class LegacyUsageAppSchema(Schema):
    app_id = fields.String(required=True)
    app_name = fields.String(allow_none=True)
    owner_id = fields.String(allow_none=True)
    owner_email = fields.String(allow_none=True)
    client_id = fields.String(required=True)
    last_used_at = Rfc3339(allow_none=True, metadata={"description": "The last use of an access token."})
    uses = fields.Integer(required=True, metadata={"description": "Access-token uses counted."})
    windows = fields.Integer(required=True, metadata={"description": "Use windows (e.g. hours) with at least one use."})
    uses_api_keys = fields.Boolean(required=True, metadata={"description": "Whether any of the app's API keys has been used."})
    api_keys_last_used_at = Rfc3339(allow_none=True)
    tokens_issued = fields.Integer(required=True)
    last_token_at = Rfc3339(allow_none=True)
    first_used_at = Rfc3339(allow_none=True)
    disabled_at = Rfc3339(allow_none=True)


class LegacyUsageSchema(Schema):
    sunset_at = Rfc3339(required=True)
    apps = fields.List(fields.Nested(LegacyUsageAppSchema), required=True)
