"""The policy table: every RPC has a rule (deny by default) and roles may what the spec says."""

from __future__ import annotations

from types import MappingProxyType

from google.protobuf.descriptor import FieldDescriptor

from ledger.security import policy
from ledger.security.policy import Rule, Scope, methods_without_rule, rule_for, rules
from ledger.security.roles import Role
from ledger.service import discovery

ledger = "/timebank.ledger.v1.LedgerService/"
views = "/timebank.ledger.v1.LedgerViewService/"
access = "/timebank.ledger.v1.AccessService/"
audit = "/timebank.ledger.v1.AuditService/"
pools = "/timebank.ledger.v1.PoolService/"

reads = {
    f"{ledger}GetBank",
    f"{ledger}GetAccount",
    f"{ledger}ListAccounts",
    f"{ledger}GetTransfer",
    f"{ledger}ListAccountTransfers",
    f"{ledger}ListPendingTransfers",
    f"{views}GetAccountSummary",
    f"{views}ListStatementEntries",
    f"{views}GetBankReport",
    f"{pools}GetPool",
    f"{pools}GetPoolBudget",
    f"{pools}ListGrantRequests",
    f"{pools}ListRequestsAwaitingApprover",
}
front_end_writes = {
    f"{ledger}OpenAccount",
    f"{ledger}CreateTransfer",
    f"{ledger}CreateTransfers",
    f"{ledger}PostPendingTransfer",
    f"{ledger}VoidPendingTransfer",
    f"{ledger}ChangeAccountMetadata",
    # Grants are asked for and decided through the front-end; who may decide one is the
    # domain's rule (an approver's own member token, or an approver key).
    f"{pools}RequestGrant",
    f"{pools}ApproveGrant",
    f"{pools}RejectGrant",
    f"{pools}CancelGrant",
}
# A bank's whole transfer list and its impact report (every member's figures): its
# coordinators and auditors, not its front-end (member consent is per member, on the
# member-scoped lists).
coordinator_reads = {f"{ledger}ListTransfers", f"{views}GetImpactReport"}
admin_only = {
    f"{ledger}ChangeAccountLimits",
    f"{ledger}FreezeAccount",
    f"{ledger}UnfreezeAccount",
    f"{ledger}CloseAccount",
    f"{ledger}ReverseTransfer",
    f"{access}RegisterMemberTokenKey",
    f"{access}RemoveMemberTokenKey",
    f"{access}SetBankPolicy",
    # Pool policies and approvers are the bank admin's.
    f"{pools}CreatePool",
    f"{pools}ChangePoolPolicy",
}
# Managing a bank's API keys: its admins, and the operator (for bank-admin keys).
key_management = {f"{access}IssueApiKey", f"{access}RevokeApiKey", f"{access}ListApiKeys"}
# Reads of the bank's access set-up: its admins and auditors.
access_reads = {f"{access}ListMemberTokenKeys"}
# The auditor's reads: the whole history, as-of balances and statements, checkpoints.
audit_reads = {
    f"{audit}StreamEvents",
    f"{audit}GetBalancesAsOf",
    f"{audit}ListStatementEntriesAsOf",
    f"{audit}GetCheckpoint",
    f"{audit}ListCheckpoints",
    f"{audit}ListCheckpointKeys",
}
# What a front-end may follow: live events only (the servicer narrows it to `follow`).
live_events = {f"{audit}StreamEvents"}


def test_every_method_of_every_generated_service_has_a_rule() -> None:
    methods = policy.service_methods()
    # The generated code is found, both services and all their methods.
    assert f"{ledger}CreateBank" in methods
    assert f"{views}GetBankReport" in methods
    assert f"{access}IssueApiKey" in methods
    assert f"{audit}StreamEvents" in methods
    assert f"{pools}ApproveGrant" in methods
    assert len(methods) == 47  # 45, PoolService.GetPoolBudget, LedgerViewService.GetImpactReport
    assert methods_without_rule() == []


def test_a_method_missing_from_the_table_is_reported() -> None:
    # The check above would fail: drop one entry and it is named.
    table = {name: rule for name, rule in rules.items() if name != f"{ledger}ReverseTransfer"}
    assert methods_without_rule(table=MappingProxyType(table)) == [f"{ledger}ReverseTransfer"]
    assert rule_for(f"{ledger}ReverseTransfer", table) is None
    # A service added later (say a FederationService) without rules is reported too.
    added = [*policy.service_methods(), "/timebank.ledger.v1.FederationService/Link"]
    assert methods_without_rule(added) == ["/timebank.ledger.v1.FederationService/Link"]


def test_unknown_methods_have_no_rule() -> None:
    for method in ("/timebank.ledger.v1.LedgerService/DropBank", "", "/x/y", ledger):
        assert rule_for(method) is None


def test_health_and_both_reflection_versions_are_public() -> None:
    public = {name for name, rule in rules.items() if rule.scope is Scope.PUBLIC}
    assert public == {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.health.v1.Health/List",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    }
    # These are the methods discovery serves, by its own descriptors.
    health = discovery.health_service_name
    v1 = discovery.reflection_v1_file().services_by_name["ServerReflection"]
    assert f"/{health}/List" in public
    assert f"/{v1.full_name}/{v1.methods[0].name}" in public


def test_the_operator_creates_banks_and_reads_no_bank_data() -> None:
    operator_methods = {name for name, rule in rules.items() if Role.OPERATOR in rule.roles}
    # Banks (creating and listing them: ids and names only), and the keys of banks: none of
    # these reads or writes a bank's data.
    assert operator_methods == {f"{ledger}CreateBank", f"{ledger}ListBanks"} | key_management
    create_bank = rule_for(f"{ledger}CreateBank")
    assert create_bank == Rule(frozenset({Role.OPERATOR}), Scope.DEPLOYMENT)


def test_each_role_may_do_what_the_spec_says_on_its_own_bank() -> None:
    def allowed(role: Role) -> set[str]:
        return {
            name for name, rule in rules.items() if role in rule.roles and rule.scope is Scope.BANK
        }

    assert allowed(Role.BANK_ADMIN) == (
        reads
        | front_end_writes
        | admin_only
        | key_management
        | access_reads
        | audit_reads
        | coordinator_reads
    )
    assert allowed(Role.MEMBER_APP) == reads | front_end_writes | live_events
    assert allowed(Role.AUDITOR) == reads | access_reads | audit_reads | coordinator_reads
    # Of the history, a front-end only follows live events.
    assert policy.audit_follow_only_roles == {Role.MEMBER_APP}
    assert allowed(Role.FEDERATION_PEER) == set()


def test_bank_scoped_methods_take_one_request_with_a_bank_id_string() -> None:
    # The interceptor reads the scope from the request's bank_id: it must be there, a
    # string, in a request that is one message (not a stream).
    for name, method in policy.service_method_descriptors().items():
        rule = rule_for(name)
        assert rule is not None
        assert not method.client_streaming, name
        if rule.scope is Scope.BANK:
            field = method.input_type.fields_by_name.get(policy.bank_id_field)
            assert field is not None, name
            assert field.type == FieldDescriptor.TYPE_STRING, name
