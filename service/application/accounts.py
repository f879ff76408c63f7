"""Use cases: accounts (people who manage keys, read the audit, or run the service)."""

from __future__ import annotations

import re

from service import credentials
from service.application.base import NAME_MAX, LedgerApplication, parse_uuid, text_problem
from service.domain.accounts import Account
from service.domain.actors import ROLES, Actor, RequestInfo
from service.domain.errors import Forbidden, InvalidRequest

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")



class AccountUseCases(LedgerApplication):
    def register_account(self, *, email: str, name: str, role: str, by: Actor,
                         request: RequestInfo) -> tuple[dict, str]:
        """Create an account and its personal token; the token is returned this once."""
        if not by.is_admin:
            raise Forbidden("Only an admin can create accounts.")
        email = email.strip()
        errors = {}
        if not _EMAIL.fullmatch(email) or text_problem(email, 254):
            errors["email"] = ["Not a valid e-mail address."]
        if problem := text_problem(name, NAME_MAX):
            errors["name"] = [problem]
        if role not in ROLES:
            errors["role"] = [f"Must be one of: {', '.join(ROLES)}."]
        if errors:
            raise InvalidRequest("The account could not be created; see details.", **errors)
        token = credentials.generate(credentials.PERSONAL_TOKEN_PREFIX)
        account = Account._create(
            Account.Registered, id=Account.create_id(email), email=email, name=name.strip(), role=role,
            token_digest=self.digester.hexdigest(token), token_display=credentials.display_hint(token),
            by=by.ref, request=request.as_dict(), timestamp=self.now(),
        )
        self._save_new(account, conflict=f"An account with e-mail {email!r} already exists.")
        return self._account_view(account), token

    def get_account(self, account_id: str) -> dict:
        account = self._get(Account, parse_uuid(account_id, "account"), "account")
        return self._account_view(account)

    @staticmethod
    def _account_view(account: Account) -> dict:
        return {"id": str(account.id), "email": account.email, "name": account.name,
                "role": account.role, "created_at": account.created_on}
