"""Use cases: credentials found in public (GitHub's secret scanning, the platform's own scanners).

The delivery layer recognises a reported string (``service.api.leaks``: the in-memory index, by
digest) and passes only what it found: the kind, the aggregate's id and the secret's digest. A
string that is not a credential of this service never reaches this module: it is counted and
dropped there, never stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.persistence import IntegrityError, PersistenceError

from service import credentials
from service.application.base import COMMAND_ATTEMPTS, LedgerApplication
from service.domain.accounts import Account
from service.domain.actors import Actor, RequestInfo
from service.domain.apps import App
from service.domain.campaign import Reminder
from service.domain.errors import Conflict, Forbidden, Unavailable
from service.domain.keys import ApiKey
from service.domain.leaks import LEAK_NOTICE, action_for_key

URL_MAX = 2048
SOURCE_MAX = 100
API_KEY = "api_key"
PERSONAL_TOKEN = "personal_token"


@dataclass(frozen=True)
class Found:
    """A reported string recognised as a credential of this service (never the string itself)."""

    kind: str  # api_key | personal_token
    aggregate_id: UUID
    digest: str  # hex digest of the reported secret
    url: str
    source: str


def request_dict() -> dict:
    from service.domain.actors import NO_REQUEST

    return NO_REQUEST.as_dict()


class LeakUseCases(LedgerApplication):
    leak_policy: str = "revoke"  # the deployment's (KEYLEDGER_LEAK_POLICY); set by the composition root

    def report_leaks(self, found: list[Found], *, reporter: str, by: Actor,
                     request: RequestInfo) -> list[dict]:
        """Apply the leak policy to each credential found; one answer per item, in order:
        ``{"key_id"?, "account_id"?, "action": "revoked"|"reported"|"none"}`` ("none": this
        report was recorded before). All changes are saved together."""
        if by.kind == "account" and not (by.is_admin or by.is_auditor):
            raise Forbidden("Only admins and auditors report leaks.")
        for _attempt in range(COMMAND_ATTEMPTS):
            answers, changed = self._apply_leaks(found, reporter=reporter, by=by, request=request)
            if not changed:
                return answers
            try:
                self.save(*changed)
            except IntegrityError:
                continue
            except PersistenceError as error:
                raise Unavailable("The event store cannot be written right now; retry shortly.") from error
            return answers
        raise Conflict("The reported keys are being changed right now; retry.")

    def _apply_leaks(self, found: list[Found], *, reporter: str, by: Actor,
                     request: RequestInfo) -> tuple[list[dict], list]:
        now = self.now()
        loaded: dict[UUID, object] = {}
        app_policies: dict[str, str | None] = {}
        apps: dict[str, object] = {}
        answers: list[dict] = []
        changed: dict[UUID, object] = {}
        for item in found:
            aggregate = loaded.get(item.aggregate_id)
            if aggregate is None:
                aggregate = self._find(ApiKey if item.kind == API_KEY else Account, item.aggregate_id)
                loaded[item.aggregate_id] = aggregate
            if aggregate is None:  # the index knew it, the store does not (yet): nothing to do
                answers.append({"action": "none"})
                continue
            if isinstance(aggregate, ApiKey):
                answer = {"key_id": str(aggregate.id), "action": "none"}
                if aggregate.app_id not in app_policies:
                    app = self._find(App, App.create_id(aggregate.app_id))
                    apps[aggregate.app_id] = app
                    app_policies[aggregate.app_id] = getattr(app, "leak_policy", None)
                live = item.digest in aggregate.digests and aggregate.revoked_at is None
                action = action_for_key(self.leak_policy, app_policies[aggregate.app_id]) if live else "reported"
                if aggregate.record_leak(url=item.url, source=item.source, reporter=reporter, action=action,
                                         by=by.ref, request=request.as_dict(), at=now):
                    if action == "revoked":
                        aggregate.revoke(by=by.ref, request=request.as_dict(), at=now)
                    answer["action"] = action
                    changed[aggregate.id] = aggregate
                    notice = self._leak_notice(aggregate, apps.get(aggregate.app_id), item, action, by, now)
                    if notice is not None:
                        changed[notice.id] = notice
            else:
                assert isinstance(aggregate, Account)
                answer = {"account_id": str(aggregate.id), "action": "none"}
                replacement = credentials.generate(credentials.PERSONAL_TOKEN_PREFIX)  # held by nobody
                action = aggregate.record_leak(
                    url=item.url, source=item.source, reporter=reporter,
                    current=item.digest == aggregate.token_digest,
                    new_digest=self.digester.hexdigest(replacement),
                    new_display=credentials.display_hint(replacement),
                    by=by.ref, request=request.as_dict(), at=now)
                if action is not None:
                    answer["action"] = action
                    changed[aggregate.id] = aggregate
            answers.append(answer)
        return answers, list(changed.values())

    def _leak_notice(self, key: ApiKey, app: object, item: Found, action: str, by: Actor, now) -> Reminder | None:
        """The owner's email (an outbox entry): the key's description and hint (never the secret),
        where it was found, what was done, what to do next."""
        if app is None:
            return None
        owner = self._find(Account, UUID(app.owner_id))  # type: ignore[attr-defined]
        if owner is None:
            return None
        rid = uuid5(NAMESPACE_URL, f"keyledger:leak-notice:{key.id}:{item.url}:{item.source}")
        facts = {"app_id": key.app_id, "app_name": app.name, "key_id": str(key.id),  # type: ignore[attr-defined]
                 "description": key.description, "display": key.display, "url": item.url,
                 "source": item.source, "action": action}
        return Reminder._create(
            Reminder.Recorded, id=rid, sunset_at=now, stage=LEAK_NOTICE, due_at=now, owner_id=str(owner.id),
            owner_email=owner.email, owner_name=owner.name or "", apps=[facts], by=by.ref,
            request=request_dict(), timestamp=now)
