"""Use cases: reminders before keys expire (``service.domain.expiry``).

The scheduler's job (``scheduler.expiry``) finds candidates in the views; these methods decide
against the event store and record: the owner's mail of the day (an outbox entry of the
campaign's, delivered by its outbox with retries) and one ``ApiKey.Expiring`` event per key
listed, all in one transaction. The mail lists each key's description, hint (``ak_…abcd``),
app and expiry time; never a secret.

After the expiry, ``record_expiry`` records ``ApiKey.Expired`` once per key (not for a key revoked
before): a record for the audit trail and webhooks, not what makes the key expired.
"""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from eventsourcing.persistence import IntegrityError, PersistenceError

from service.application.base import COMMAND_ATTEMPTS, LedgerApplication
from service.domain.accounts import Account
from service.domain.actors import NO_REQUEST, Actor
from service.domain.apps import App
from service.domain.campaign import Reminder
from service.domain.errors import Conflict, Forbidden, Unavailable
from service.domain.expiry import EXPIRY_NOTICE, ExpiryPlan, mail_id
from service.domain.keys import ApiKey


def _text(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ExpiryUseCases(LedgerApplication):
    def record_expiry_reminder(self, *, owner_id: str, key_ids: list[str], plan: ExpiryPlan,
                               last_used: dict[str, datetime], by: Actor) -> UUID | None:
        """Record ``owner_id``'s expiry mail of today listing each of ``key_ids`` that is due a
        stage (checked here, against the store), with its ``ApiKey.Expiring`` event.

        Returns the mail's id, or None when nothing was recorded: no key is due, or the owner's
        mail of today was recorded before (by this or another scheduler)."""
        if not by.is_admin:
            raise Forbidden("Only the scheduler (or an admin) records expiry reminders.")
        for _attempt in range(COMMAND_ATTEMPTS):
            now = self.now()
            rid = mail_id(owner_id, now.astimezone(UTC).date())
            if self._find(Reminder, rid) is not None:
                return None
            owner = self._find(Account, UUID(owner_id))
            if owner is None or not owner.email:
                return None
            keys, listed = [], []
            apps: dict[str, object] = {}
            for key_id in sorted(set(key_ids)):
                key = self._find(ApiKey, UUID(key_id))
                if key is None or key.revoked_at is not None:
                    continue
                stage = plan.due_stage(expires_at=key.expires_at, created_at=key.created_on,
                                       rolled_at=key.rolled_at, reminded=key.expiry_stages, now=now)
                if stage is None:
                    continue
                if key.app_id not in apps:
                    apps[key.app_id] = self._find(App, App.create_id(key.app_id))
                app = apps[key.app_id]
                if app is None or app.owner_id != owner_id:  # type: ignore[attr-defined]
                    continue
                key.note_expiring(stage=stage, reminder_id=str(rid), by=by.ref, request=NO_REQUEST.as_dict(),
                                  at=now)
                keys.append(key)
                listed.append({"key_id": str(key.id), "description": key.description, "display": key.display,
                               "app_id": key.app_id, "app_name": app.name,  # type: ignore[attr-defined]
                               "stage": stage, "expires_at": _text(key.expires_at),
                               "last_used_at": _text(last_used.get(str(key.id)))})
            if not keys:
                return None
            listed.sort(key=lambda item: (item["expires_at"], item["app_name"], item["description"]))
            mail = Reminder._create(
                Reminder.Recorded, id=rid, sunset_at=min(k.expires_at for k in keys), stage=EXPIRY_NOTICE,
                due_at=now, owner_id=owner_id, owner_email=owner.email, owner_name=owner.name or "",
                apps=listed, by=by.ref, request=NO_REQUEST.as_dict(), timestamp=now)
            try:
                self.save(mail, *keys)
            except IntegrityError:  # another scheduler recorded the mail or one of the keys: look again
                continue
            except PersistenceError as error:
                raise Unavailable("The event store cannot be written right now; retry shortly.") from error
            return rid
        raise Conflict("The keys are being changed right now; the next run tries again.")

    def keys_still_expiring(self, reminder: dict) -> list[dict]:
        """The keys an expiry mail lists that still concern their owner at delivery: not revoked,
        not expired, not rolled since the mail was recorded."""
        now = self.now()
        still = []
        for item in reminder["apps"]:
            key = self._find(ApiKey, UUID(item["key_id"]))
            if key is None or key.revoked_at is not None or key.expires_at is None or key.expires_at <= now:
                continue
            if key.rolled_at is not None and key.rolled_at >= reminder["recorded_at"]:
                continue
            still.append(item)
        return still

    def record_expiry(self, key_id: str, *, by: Actor) -> bool:
        """Record ``ApiKey.Expired`` for the key if its expiry has passed (checked here, against the
        store, at the application's clock) and it is not recorded yet; False when nothing was
        recorded (already recorded, by this or another scheduler; revoked; not expired)."""
        if not by.is_admin:
            raise Forbidden("Only the scheduler (or an admin) records expiries.")
        for _attempt in range(COMMAND_ATTEMPTS):
            key = self._find(ApiKey, UUID(key_id))
            if key is None or not key.note_expired(by=by.ref, request=NO_REQUEST.as_dict(), at=self.now()):
                return False
            try:
                self.save(key)
            except IntegrityError:  # the key changed meanwhile (or another scheduler recorded it): look again
                continue
            except PersistenceError as error:
                raise Unavailable("The event store cannot be written right now; retry shortly.") from error
            return True
        raise Conflict("The key is being changed right now; the next run tries again.")
