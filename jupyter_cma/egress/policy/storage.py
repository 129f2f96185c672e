"""Stored policies: `PolicyStore` (create, update, delete, list through `Store`) and what it reads back.

A stored row that no longer validates is a `CorruptPolicy`, never an error:
it denies everything for whoever it might apply to. `specificity` is the
order of the policies that apply to a session, most specific first.
"""

from __future__ import annotations

import json
import secrets as _random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .document import READ_ONLY_FIELDS, Policy, parse_policy_json
from .errors import PolicyConflict, PolicyError
from .scopes import SCOPE_RANK

if TYPE_CHECKING:
    from ...store import Store
    from .scopes import SessionContext

@dataclass(frozen=True)
class PolicyRecord:
    """A stored, valid policy."""

    id: str
    policy: Policy
    created_at: float
    updated_at: float

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, **self.policy.to_document(), "created_at": self.created_at, "updated_at": self.updated_at}


@dataclass(frozen=True)
class CorruptPolicy:
    """A stored row that no longer validates. It denies everything for whoever it might apply to."""

    id: str
    name: str
    scope_key: str | None
    error: str
    created_at: float
    updated_at: float

    def might_apply(self, ctx: SessionContext) -> bool:
        if self.scope_key == "environment" or self.scope_key is None:
            return True
        kind, _, target = self.scope_key.partition(":")
        if kind == "agent":
            return ctx.agent_id == target
        if kind == "session":
            return ctx.session_id == target
        return True  # a scope we cannot read might be anyone's

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "error": self.error, "created_at": self.created_at, "updated_at": self.updated_at}


def _record_from_row(row: Mapping[str, Any]) -> PolicyRecord | CorruptPolicy:
    try:
        policy = parse_policy_json(row["document"])
        if policy.scope.key != row["scope_key"]:
            raise PolicyError("its scope does not agree with the stored scope key")
        return PolicyRecord(row["id"], policy, row["created_at"], row["updated_at"])
    except Exception as exc:  # anything wrong with a stored row makes it corrupt, never fatal
        return CorruptPolicy(row["id"], str(row["name"]), row["scope_key"], f"stored policy is invalid: {exc}", row["created_at"], row["updated_at"])


class PolicyStore:
    """Create, update, delete, list and validate policies (SQLite through `Store`).

    Documents are validated on write and again on read. Reads for resolution
    are cached by the store's policy revision, which every write bumps in the
    same transaction, so an edit is seen by the very next resolution.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._cache_revision: int | None = None
        self._cache: list[PolicyRecord | CorruptPolicy] = []

    @staticmethod
    def validate(doc: object) -> Policy:
        """Check a document without storing it (PolicyError on problems)."""
        if isinstance(doc, dict):
            doc = {k: v for k, v in doc.items() if k not in READ_ONLY_FIELDS}
        return Policy.from_document(doc)

    def create(self, doc: object) -> PolicyRecord:
        policy = self.validate(doc)
        policy_id = "pol_" + _random.token_hex(10)
        self._write(lambda: self.store.insert_egress_policy(policy_id, name=policy.name, scope_key=policy.scope.key, document=json.dumps(policy.to_document())), policy)
        record = self.get(policy_id)
        assert isinstance(record, PolicyRecord)
        return record

    def update(self, policy_id: str, doc: object) -> PolicyRecord | None:
        """Replace a policy's document; None if there is no such policy."""
        policy = self.validate(doc)
        found = self._write(lambda: self.store.update_egress_policy(policy_id, name=policy.name, scope_key=policy.scope.key, document=json.dumps(policy.to_document())), policy)
        if not found:
            return None
        record = self.get(policy_id)
        assert isinstance(record, PolicyRecord)
        return record

    def delete(self, policy_id: str) -> bool:
        return self.store.delete_egress_policy(policy_id)

    def get(self, policy_id: str) -> PolicyRecord | CorruptPolicy | None:
        row = self.store.egress_policy(policy_id)
        return None if row is None else _record_from_row(row)

    def list(self) -> list[PolicyRecord | CorruptPolicy]:
        """Every stored policy, most specific scope first (the order resolution uses)."""
        return sorted((_record_from_row(r) for r in self.store.egress_policies()), key=_list_order)

    def current(self) -> list[PolicyRecord | CorruptPolicy]:
        """All policies as of now: re-read only when the revision moved."""
        revision = self.store.egress_revision()
        if revision != self._cache_revision:
            self._cache = [_record_from_row(r) for r in self.store.egress_policies()]
            self._cache_revision = revision
        return self._cache

    def _write(self, op: Callable[[], Any], policy: Policy) -> Any:
        from ...store import Conflict

        try:
            return op()
        except Conflict as exc:
            if exc.field == "name":
                raise PolicyConflict(f"a policy named {policy.name!r} already exists; choose another name or update that policy") from None
            raise PolicyConflict(f"a policy for {policy.scope.describe()} already exists; update it instead (one policy per scope)") from None


def specificity(record: PolicyRecord) -> tuple[int, int, float, str]:
    """The sort key of the policies that apply to a session: most specific scope first (resolution's order)."""
    scope = record.policy.scope
    return (SCOPE_RANK[scope.kind], -len(scope.matchers), -record.updated_at, record.id)


def _list_order(record: PolicyRecord | CorruptPolicy) -> tuple[int, int, float, str]:
    if isinstance(record, CorruptPolicy):
        return (-1, 0, -record.updated_at, record.id)  # broken ones first: they need attention
    return specificity(record)
