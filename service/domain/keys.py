"""API keys: scoped credentials of one app that can be changed, rolled and revoked."""

from __future__ import annotations

from datetime import datetime

from eventsourcing.domain import event

from service.domain.aggregate import LedgerAggregate
from service.domain.errors import KeyExpired, KeyRevoked
from service.domain.restrictions import KINDS


def key_status(revoked_at: datetime | None, expires_at: datetime | None, now: datetime) -> str:
    """A key's status: ``revoked``, ``expired`` (its expiry has passed) or ``active``."""
    if revoked_at is not None:
        return "revoked"
    if expires_at is not None and expires_at <= now:
        return "expired"
    return "active"


class ApiKey(LedgerAggregate):
    limits = ()  # rate limits (LimitsChanged: a list); never changed in place, only replaced
    class Issued(LedgerAggregate.Created):
        app_id: str
        description: str
        scopes: list
        expires_at: datetime | None
        digest: str
        display: str
        origin: str

    class ScopesChanged(LedgerAggregate.Event):
        scopes: list
        previous_scopes: list
        digests: list  # the secrets (digests) the change applies to: current and in grace

    class DescriptionChanged(LedgerAggregate.Event):
        description: str

    class Rolled(LedgerAggregate.Event):
        digest: str
        display: str
        previous_digest: str
        previous_display: str
        previous_valid_until: datetime

    class Revoked(LedgerAggregate.Event):
        digests: list  # every secret the key still honoured

    class LimitsChanged(LedgerAggregate.Event):
        limits: list  # [{"limit": n, "per": "1m"}], canonical (service.domain.limits); [] for none
        previous_limits: list

    class Restricted(LedgerAggregate.Event):
        """Who may use the key: ``restrictions`` is None (anyone) or one kind's canonical list
        (service.domain.restrictions); ``digests`` as in ScopesChanged."""

        restrictions: dict | None
        previous_restrictions: dict | None
        digests: list

    # None: no client restriction (every key issued before restrictions existed reads so).
    restrictions: dict | None = None

    class Expiring(LedgerAggregate.Event):
        """Its owner is reminded that the key expires soon (service.domain.expiry; the webhook
        type ``key.expiring``): the stage (``7d``), the expiry, and the mail that says so."""

        stage: str
        expires_at: datetime
        reminder_id: str

    class Expired(LedgerAggregate.Event):
        """The key's expiry has passed, recorded by the scheduler once (the webhook type
        ``key.expired``). A record for the audit trail and webhooks: the key was expired from
        ``expires_at`` on, whether or not this is recorded yet; its timestamp is when it was
        recorded (after ``expires_at``, by as long as the scheduler took to notice)."""

        expires_at: datetime

    # The expiry reminder stages recorded (ApiKey.Expiring), when the key was last rolled, and
    # when its expiry was recorded (ApiKey.Expired); class defaults for keys (and snapshots) from
    # before these existed.
    expiry_stages: tuple = ()
    rolled_at: datetime | None = None
    expired_recorded_at: datetime | None = None

    @event(Issued)
    def __init__(
        self, app_id: str, description: str, scopes: list, expires_at: datetime | None,
        digest: str, display: str, origin: str, by: str, request: dict,
    ) -> None:
        self.app_id = app_id
        self.description = description
        self.scopes = list(scopes)
        self.expires_at = expires_at
        self.digest = digest
        self.display = display
        self.origin = origin
        self.revoked_at: datetime | None = None
        # Secrets replaced by a roll, still honoured until their grace period ends:
        # [digest, display, valid_until] each. Events that change what every secret of the
        # key may do name them all (``digests``), so read models need no look-up.
        self.retiring: list[list] = []

    # -- reading -------------------------------------------------------------

    def status_at(self, now: datetime) -> str:
        return key_status(self.revoked_at, self.expires_at, now)

    @property
    def digests(self) -> list[str]:
        """The digests of the current secret and of those still in a roll's grace period."""
        return [self.digest] + [digest for digest, _, _ in self.retiring]

    def _require_changeable(self, now: datetime) -> None:
        status = self.status_at(now)
        if status == "revoked":
            raise KeyRevoked("This key has been revoked and can no longer be changed; create a new key.")
        if status == "expired":
            raise KeyExpired("This key has expired and can no longer be changed; create a new key.")

    # -- commands ------------------------------------------------------------

    def change_scopes(self, scopes: list[str], *, by: str, request: dict, at: datetime) -> bool:
        self._require_changeable(at)
        if scopes == self.scopes:
            return False
        self._change_scopes(scopes=list(scopes), previous_scopes=list(self.scopes), digests=self.digests,
                            by=by, request=request, timestamp=at)
        return True

    @event(ScopesChanged)
    def _change_scopes(self, scopes: list, previous_scopes: list, digests: list, by: str,
                       request: dict, timestamp: datetime) -> None:
        self.scopes = list(scopes)

    def restrict(self, restrictions: dict | None, *, by: str, request: dict, at: datetime) -> bool:
        """Set the key's client restriction (``parse_restrictions``' canonical form; None lifts it)."""
        self._require_changeable(at)
        assert restrictions is None or (len(restrictions) == 1 and next(iter(restrictions)) in KINDS)
        if restrictions == self.restrictions:
            return False
        self._restrict(restrictions=restrictions, previous_restrictions=self.restrictions,
                       digests=self.digests, by=by, request=request, timestamp=at)
        return True

    @event(Restricted)
    def _restrict(self, restrictions: dict | None, previous_restrictions: dict | None, digests: list,
                  by: str, request: dict, timestamp: datetime) -> None:
        self.restrictions = restrictions

    def change_description(self, description: str, *, by: str, request: dict, at: datetime) -> bool:
        self._require_changeable(at)
        if description == self.description:
            return False
        self._change_description(description=description, by=by, request=request, timestamp=at)
        return True

    @event(DescriptionChanged)
    def _change_description(self, description: str, by: str, request: dict, timestamp: datetime) -> None:
        self.description = description

    def roll(self, *, digest: str, display: str, grace_until: datetime, by: str, request: dict,
             at: datetime) -> None:
        self._require_changeable(at)
        self._roll(digest=digest, display=display, previous_digest=self.digest,
                   previous_display=self.display, previous_valid_until=grace_until, by=by,
                   request=request, timestamp=at)

    @event(Rolled)
    def _roll(self, digest: str, display: str, previous_digest: str, previous_display: str,
              previous_valid_until: datetime, by: str, request: dict, timestamp: datetime) -> None:
        self.retiring = [r for r in self.retiring if r[2] > timestamp]
        if previous_valid_until > timestamp:
            self.retiring.append([previous_digest, previous_display, previous_valid_until])
        self.digest = digest
        self.display = display
        self.rolled_at = timestamp

    def revoke(self, *, by: str, request: dict, at: datetime) -> bool:
        """Revoke the key and every secret it still honours; revoking twice is a no-op."""
        if self.revoked_at is not None:
            return False
        self._revoke(digests=self.digests, by=by, request=request, timestamp=at)
        return True

    @event(Revoked)
    def _revoke(self, digests: list, by: str, request: dict, timestamp: datetime) -> None:
        self.revoked_at = timestamp
        self.retiring = []

    # -- expiry reminders (service.domain.expiry) ------------------------------

    def note_expiring(self, *, stage: str, reminder_id: str, by: str, request: dict, at: datetime) -> bool:
        """Record that the owner is reminded of this stage; False (nothing recorded) if it was
        already, or the key is revoked or never expires."""
        if stage in self.expiry_stages or self.revoked_at is not None or self.expires_at is None:
            return False
        self._expiring(stage=stage, expires_at=self.expires_at, reminder_id=reminder_id, by=by,
                       request=request, timestamp=at)
        return True

    @event(Expiring)
    def _expiring(self, stage: str, expires_at: datetime, reminder_id: str, by: str, request: dict,
                  timestamp: datetime) -> None:
        self.expiry_stages = [*self.expiry_stages, stage]

    def note_expired(self, *, by: str, request: dict, at: datetime) -> bool:
        """Record that the key's expiry has passed; False (nothing recorded) if it was already,
        the key never expires or has not expired by ``at``, or it was revoked (a revoked key
        does not expire afterwards)."""
        if (self.expired_recorded_at is not None or self.revoked_at is not None or self.expires_at is None
                or self.expires_at > at):
            return False
        self._expired(expires_at=self.expires_at, by=by, request=request, timestamp=at)
        return True

    @event(Expired)
    def _expired(self, expires_at: datetime, by: str, request: dict, timestamp: datetime) -> None:
        self.expired_recorded_at = timestamp

    # -- rate limits (service.domain.limits) -----------------------------------

    def change_limits(self, limits: list, *, by: str, request: dict, at: datetime) -> bool:
        """Replace the key's rate limits (checked and canonical); the same limits change nothing."""
        self._require_changeable(at)
        if list(limits) == list(self.limits):
            return False
        self._change_limits(limits=list(limits), previous_limits=list(self.limits), by=by, request=request,
                            timestamp=at)
        return True

    @event(LimitsChanged)
    def _change_limits(self, limits: list, previous_limits: list, by: str, request: dict,
                       timestamp: datetime) -> None:
        self.limits = list(limits)

    # -- leaks (service.domain.leaks holds the policy) ---------------------------

    class Leaked(LedgerAggregate.Event):
        url: str  # where the secret was found
        source: str  # the report's source (GitHub's "content", "commit", … or a scanner's name)
        reporter: str  # "github" or the account that reported it
        action: str  # what the policy decided: "revoked" or "reported"

    leaks: tuple = ()  # [url, source] of each distinct report (aggregates from before leaks: none)
    leaked_at: datetime | None = None

    def record_leak(self, *, url: str, source: str, reporter: str, action: str, by: str, request: dict,
                    at: datetime) -> bool:
        """Record a report of this key's secret found in public; the same (url, source) twice is
        recorded once. A key already revoked is recorded as reported (nothing more to do)."""
        if [url, source] in [list(leak) for leak in self.leaks]:
            return False
        if self.revoked_at is not None:
            action = "reported"
        self._leaked(url=url, source=source, reporter=reporter, action=action, by=by, request=request,
                     timestamp=at)
        return True

    @event(Leaked)
    def _leaked(self, url: str, source: str, reporter: str, action: str, by: str, request: dict,
                timestamp: datetime) -> None:
        self.leaks = [*self.leaks, [url, source]]
        if self.leaked_at is None:
            self.leaked_at = timestamp
