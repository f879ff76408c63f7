"""Use cases: accounts (people who manage keys, read the audit, or run the service)."""

from __future__ import annotations

import re
from datetime import datetime

from eventsourcing.persistence import IntegrityError, PersistenceError

from service import credentials
from service.application.base import (
    COMMAND_ATTEMPTS,
    NAME_MAX,
    LedgerApplication,
    parse_uuid,
    text_problem,
)
from service.domain.accounts import Account
from service.domain.actors import ROLES, Actor, RequestInfo
from service.domain.errors import Conflict, Forbidden, InvalidRequest, NotFound, Unavailable

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


class AccountUseCases(LedgerApplication):
    def register_account(self, *, email: str, name: str, role: str, by: Actor,
                         request: RequestInfo) -> tuple[dict, str]:
        """Create an account and its personal token; the token is returned this once."""
        if not by.is_admin:
            raise Forbidden("Only an admin can create accounts.")
        email = email.strip()
        errors = self._account_problems(email, name, role)
        if errors:
            raise InvalidRequest("The account could not be created; see details.", **errors)
        account, token = self._new_account(email=email, name=name, role=role, by=by, request=request,
                                           now=self.now())
        self._save_new(account, conflict=f"An account with e-mail {email!r} already exists.")
        return self._account_view(account), token

    def replace_personal_token(self, email: str, *, by: Actor, request: RequestInfo) -> tuple[dict, str]:
        """Give an account a new personal token (the old one stops at once); returned this once.
        For owners whose account was imported (they never saw a token) and for lost tokens."""
        if not by.is_admin:
            raise Forbidden("Only an admin can replace a personal token.")
        token = credentials.generate(credentials.PERSONAL_TOKEN_PREFIX)
        for _attempt in range(COMMAND_ATTEMPTS):
            account = self._find(Account, Account.create_id(email))
            if account is None:
                raise NotFound(f"No account with e-mail {email.strip()!r}.")
            account.replace_token(digest=self.digester.hexdigest(token),
                                  display=credentials.display_hint(token), by=by.ref,
                                  request=request.as_dict(), at=self.now())
            try:
                self.save(account)
            except IntegrityError:
                continue
            except PersistenceError as error:
                raise Unavailable("The event store cannot be written right now; retry shortly.") from error
            return self._account_view(account), token
        raise Conflict("The account is being changed by someone else right now; retry.")

    @staticmethod
    def _account_problems(email: str, name: str, role: str) -> dict[str, list[str]]:
        errors = {}
        if not isinstance(email, str) or not _EMAIL.fullmatch(email) or text_problem(email, 254):
            errors["email"] = ["Not a valid e-mail address."]
        if not isinstance(name, str) or (problem := text_problem(name, NAME_MAX)):
            errors["name"] = [problem if isinstance(name, str) else "A string."]
        if role not in ROLES:
            errors["role"] = [f"Must be one of: {', '.join(ROLES)}."]
        return errors

    def _new_account(self, *, email: str, name: str, role: str, by: Actor, request: RequestInfo,
                     now: datetime) -> tuple[Account, str]:
        token = credentials.generate(credentials.PERSONAL_TOKEN_PREFIX)
        account = Account._create(
            Account.Registered, id=Account.create_id(email), email=email, name=name.strip(), role=role,
            token_digest=self.digester.hexdigest(token), token_display=credentials.display_hint(token),
            by=by.ref, request=request.as_dict(), timestamp=now,
        )
        return account, token

    def get_account(self, account_id: str) -> dict:
        account = self._get(Account, parse_uuid(account_id, "account"), "account")
        return self._account_view(account)

    @staticmethod
    def _account_view(account: Account) -> dict:
        return {"id": str(account.id), "email": account.email, "name": account.name,
                "role": account.role, "created_at": account.created_on}
