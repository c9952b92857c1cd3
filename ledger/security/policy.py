"""The one table saying which roles may call each method, and where its bank scope is read."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from google.protobuf.descriptor import MethodDescriptor

from ledger.security.roles import Role


class Scope(StrEnum):
    """How a method's scope is found, and what a key must be scoped to for it."""

    # Anyone, with or without a key: health checking and reflection.
    PUBLIC = "public"
    # The whole deployment: the key has the deployment's scope (operator keys). The
    # request may name a bank (CreateBank names the new one) but needs no existing scope.
    DEPLOYMENT = "deployment"
    # One bank: the request's `bank_id` field, which must be the key's bank. Where a rule
    # of this scope lets operators in (key management), an operator key acts on any bank:
    # its scope is the whole deployment.
    BANK = "bank"


# The request field a BANK-scoped method names its bank in.
bank_id_field = "bank_id"


@dataclass(frozen=True)
class Rule:
    roles: frozenset[Role]
    scope: Scope

    def __post_init__(self) -> None:
        assert (self.scope is Scope.PUBLIC) == (not self.roles), "public means no roles"
        if self.scope is Scope.DEPLOYMENT:
            assert self.roles <= {Role.OPERATOR}, "deployment-wide calls are the operator's"


_public = Rule(frozenset(), Scope.PUBLIC)
_operator = Rule(frozenset({Role.OPERATOR}), Scope.DEPLOYMENT)
# Everything on the bank's data that changes its rules or someone's standing.
_bank_admin = Rule(frozenset({Role.BANK_ADMIN}), Scope.BANK)
# The front-end's everyday writes: accounts and transfers.
_bank_write = Rule(frozenset({Role.BANK_ADMIN, Role.MEMBER_APP}), Scope.BANK)
_bank_read = Rule(frozenset({Role.BANK_ADMIN, Role.MEMBER_APP, Role.AUDITOR}), Scope.BANK)
# A bank's keys: operators manage bank-admin keys, bank admins their bank's other keys.
_bank_keys = Rule(frozenset({Role.OPERATOR, Role.BANK_ADMIN}), Scope.BANK)
_bank_access_read = Rule(frozenset({Role.BANK_ADMIN, Role.AUDITOR}), Scope.BANK)

# Auditing: the whole history and the as-of reads; following live events only.
_audit_read = Rule(frozenset({Role.BANK_ADMIN, Role.AUDITOR}), Scope.BANK)
_audit_stream = Rule(frozenset({Role.BANK_ADMIN, Role.AUDITOR, Role.MEMBER_APP}), Scope.BANK)
# Roles StreamEvents admits only with `follow`, starting at most
# LEDGER_AUDIT_FOLLOW_RESUME_EVENTS_MAX events behind the head (the servicer applies it).
audit_follow_only_roles: frozenset[Role] = frozenset({Role.MEMBER_APP})

# A bank's whole transfer list is the coordinators' (and auditors'): through a front-end
# key it would show every member's transfers, which member consent keeps per member.
_bank_coordinator_read = Rule(frozenset({Role.BANK_ADMIN, Role.AUDITOR}), Scope.BANK)

_ledger = "/timebank.ledger.v1.LedgerService/"
_views = "/timebank.ledger.v1.LedgerViewService/"
_health = "/grpc.health.v1.Health/"
_audit = "/timebank.ledger.v1.AuditService/"
_access = "/timebank.ledger.v1.AccessService/"
_pools = "/timebank.ledger.v1.PoolService/"

# Full method name -> rule. A method missing here is refused (deny by default); a test
# fails when a registered service has a method without an entry.
rules: Mapping[str, Rule] = MappingProxyType(
    {
        f"{_ledger}CreateBank": _operator,
        f"{_ledger}GetBank": _bank_read,
        f"{_ledger}OpenAccount": _bank_write,
        f"{_ledger}GetAccount": _bank_read,
        f"{_ledger}ListAccounts": _bank_read,
        f"{_ledger}ChangeAccountLimits": _bank_admin,
        f"{_ledger}FreezeAccount": _bank_admin,
        f"{_ledger}UnfreezeAccount": _bank_admin,
        f"{_ledger}CloseAccount": _bank_admin,
        f"{_ledger}CreateTransfer": _bank_write,
        f"{_ledger}CreateTransfers": _bank_write,
        f"{_ledger}PostPendingTransfer": _bank_write,
        f"{_ledger}VoidPendingTransfer": _bank_write,
        f"{_ledger}ReverseTransfer": _bank_admin,
        f"{_ledger}GetTransfer": _bank_read,
        f"{_ledger}ListAccountTransfers": _bank_read,
        # Front-end lists (issue 12): member-scoped ones check member consent in the servicer.
        f"{_ledger}ListPendingTransfers": _bank_read,
        f"{_ledger}ListTransfers": _bank_coordinator_read,
        f"{_ledger}ChangeAccountMetadata": _bank_write,
        f"{_ledger}ListBanks": _operator,
        f"{_views}GetAccountSummary": _bank_read,
        f"{_views}ListStatementEntries": _bank_read,
        f"{_views}GetBankReport": _bank_read,
        # Every member's figures: the coordinators' and auditors', as the transfer list is.
        f"{_views}GetImpactReport": _bank_coordinator_read,
        f"{_access}IssueApiKey": _bank_keys,
        f"{_access}RevokeApiKey": _bank_keys,
        f"{_access}ListApiKeys": _bank_keys,
        f"{_access}RegisterMemberTokenKey": _bank_admin,
        f"{_access}RemoveMemberTokenKey": _bank_admin,
        f"{_access}ListMemberTokenKeys": _bank_access_read,
        f"{_access}SetBankPolicy": _bank_admin,
        # AuditService (issue 10): the history, as-of reads and checkpoints are the
        # auditor's and the bank admin's; a front-end may only follow live events
        # (StreamEvents lets member-app keys in, and audit_follow_only_roles below narrows
        # what they may ask for).
        f"{_audit}StreamEvents": _audit_stream,
        f"{_audit}GetBalancesAsOf": _audit_read,
        f"{_audit}ListStatementEntriesAsOf": _audit_read,
        f"{_audit}GetCheckpoint": _audit_read,
        f"{_audit}ListCheckpoints": _audit_read,
        f"{_audit}ListCheckpointKeys": _audit_read,
        # PoolService (issue 11): bank admins set pools and policies; grants are requested
        # and decided through the front-end (a member approver with their own token) or an
        # admin key. Who may decide a given request is the domain's rule (pools.py).
        f"{_pools}CreatePool": _bank_admin,
        f"{_pools}ChangePoolPolicy": _bank_admin,
        f"{_pools}RequestGrant": _bank_write,
        f"{_pools}ApproveGrant": _bank_write,
        f"{_pools}RejectGrant": _bank_write,
        f"{_pools}CancelGrant": _bank_write,
        f"{_pools}GetPool": _bank_read,
        f"{_pools}GetPoolBudget": _bank_read,
        f"{_pools}ListGrantRequests": _bank_read,
        f"{_pools}ListRequestsAwaitingApprover": _bank_read,
        f"{_health}Check": _public,
        f"{_health}Watch": _public,
        f"{_health}List": _public,
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": _public,
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": _public,
    }
)

# Where the generated code of our own services lives (every *_pb2 module in it is ours).
generated_package = "timebank.ledger.v1"


def rule_for(method: str, table: Mapping[str, Rule] = rules) -> Rule | None:
    """The rule of a full method name (`/package.Service/Method`); None: refuse the call."""
    return table.get(method)


def service_method_descriptors(package: str = generated_package) -> dict[str, MethodDescriptor]:
    """Every method of every service in the package's generated *_pb2 modules, by full name."""
    root = importlib.import_module(package)
    methods = {}
    for module_info in pkgutil.iter_modules(root.__path__):
        if not module_info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"{package}.{module_info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                methods[f"/{service.full_name}/{method.name}"] = method
    return methods


def service_methods(package: str = generated_package) -> list[str]:
    """Full names of every method of every service in the package's generated *_pb2 modules."""
    return sorted(service_method_descriptors(package))


def methods_without_rule(
    methods: Iterable[str] | None = None, table: Mapping[str, Rule] = rules
) -> list[str]:
    """The methods (by default every generated one) that the table has no rule for."""
    return sorted(set(service_methods() if methods is None else methods) - set(table))
