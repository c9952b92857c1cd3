"""The gRPC adapter of the Gate: a server interceptor that every call passes through.

For each call it swaps the method's request deserializer for a checked one (an oversized
or undecodable body becomes a named error, never INTERNAL), looks up the method's rule
(none: PERMISSION_DENIED, deny by default), and for non-public methods asks the Gate to
admit the call before the servicer runs, inside a context where current_caller() is the
authenticated caller. Refusals end with a google.rpc.Status carrying an ErrorInfo (and a
RetryInfo when a retry may succeed). Unary-unary and unary-stream methods are guarded;
public methods (health, reflection) only get the checked deserializer.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

import grpc

from ledger.domain.errors import DomainError
from ledger.security.bodies import RefusedBody, checked_deserializer, request_bytes_max
from ledger.security.caller import context_with
from ledger.security.errors import SecurityError
from ledger.security.gate import Admission, Gate, Metadata
from ledger.security.policy import Rule, Scope
from ledger.service import errors

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Behavior = Callable[..., Any]
# grpc-stubs makes these generic; the runtime classes are not subscriptable.
if TYPE_CHECKING:
    _ServerInterceptor = grpc.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.ServerInterceptor
# Attributes grpc reads from a behavior (Health/Watch sets them); a wrapper keeps them.
_behavior_attributes = ("experimental_non_blocking", "experimental_thread_pool")


class SecurityInterceptor(_ServerInterceptor):
    """Authenticates, authorises and bounds every call by the Gate's decisions."""

    def __init__(self, gate: Gate, request_bytes_max: int = request_bytes_max) -> None:
        self._gate = gate
        self._request_bytes_max = request_bytes_max
        # Method -> (the servicer's handler, the guarded one): built once per method, not
        # per call. Only registered methods get here, so it holds as many as there are.
        self._guarded: dict[str, tuple[Handler, Handler]] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None  # no such method: grpc answers UNIMPLEMENTED
        method = handler_call_details.method
        known = self._guarded.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        guarded = self._guard(method, handler)
        self._guarded[method] = (handler, guarded)
        return guarded

    def _guard(self, method: str, handler: Handler) -> Handler:
        deserializer = checked_deserializer(handler.request_deserializer, self._request_bytes_max)
        rule = self._gate.rule_for(method)
        if rule is not None and rule.scope is Scope.PUBLIC:
            behavior = self._public(method, handler.request_streaming, _behavior(handler))
            return _handler_like(handler, behavior, deserializer)
        # A non-public method reads its scope from its one request message, so only unary
        # requests can be guarded; the policy test checks that every ruled method is one.
        if rule is None or handler.request_streaming:
            return _handler_like(handler, self._refused(method), deserializer)
        if handler.response_streaming:
            behavior = self._unary_stream(method, rule, _behavior(handler))
        else:
            behavior = self._unary_unary(method, rule, _behavior(handler))
        return _handler_like(handler, behavior, deserializer)

    def _unary_unary(self, method: str, rule: Rule, inner: Behavior) -> Behavior:
        gate = self._gate

        def behavior(request: object, context: grpc.ServicerContext) -> Any:
            metadata = tuple(context.invocation_metadata())
            admission = _admit(gate, method, rule, metadata, request, context)
            try:
                return context_with(admission.caller).run(inner, request, context)
            finally:
                admission.release()

        return behavior

    def _unary_stream(self, method: str, rule: Rule, inner: Behavior) -> Behavior:
        gate = self._gate

        def behavior(request: object, context: grpc.ServicerContext) -> Iterator[Any]:
            metadata = tuple(context.invocation_metadata())
            admission = _admit(gate, method, rule, metadata, request, context)
            # The stream ends long after this returns, and maybe without ever being read
            # (a cancelled call): grpc's termination callback gives the slots back either way.
            if not context.add_callback(admission.release):
                admission.release()  # the call has already ended
            run_in = context_with(admission.caller)
            return _InContext(run_in, run_in.run(inner, request, context))

        return behavior

    def _public(self, method: str, request_streaming: bool, inner: Behavior) -> Behavior:
        gate = self._gate

        # `*more`: grpc passes a non-blocking behavior (Health/Watch) a callback as well.
        def behavior(argument: Any, context: grpc.ServicerContext, *more: Any) -> Any:
            if request_streaming:
                argument = _checked_stream(argument, context, gate, method)
            elif isinstance(argument, RefusedBody):
                _abort(context, gate.refuse_body(method, argument))
            return inner(argument, context, *more)

        for name in _behavior_attributes:
            if hasattr(inner, name):
                setattr(behavior, name, getattr(inner, name))
        return behavior

    def _refused(self, method: str) -> Behavior:
        gate = self._gate

        def behavior(_argument: Any, context: grpc.ServicerContext) -> Any:
            _abort(context, gate.refuse_method(method))

        return behavior


class _InContext:
    """A response stream whose every step runs in the caller's context."""

    def __init__(self, context: contextvars.Context, responses: Iterator[Any]) -> None:
        self._context = context
        self._responses = responses

    def __iter__(self) -> _InContext:
        return self

    def __next__(self) -> Any:
        return self._context.run(next, self._responses)


def _admit(
    gate: Gate,
    method: str,
    rule: Rule,
    metadata: Metadata,
    request: object,
    context: grpc.ServicerContext,
) -> Admission:
    try:
        return gate.admit(method, rule, metadata, request)
    except SecurityError as error:
        _abort(context, error)
    except DomainError as error:  # a bank_id that is not an id: the field is named
        context.abort_with_status(errors.to_status(error))


def _checked_stream(
    requests: Iterator[Any], context: grpc.ServicerContext, gate: Gate, method: str
) -> Iterator[Any]:
    for request in requests:
        if isinstance(request, RefusedBody):
            _abort(context, gate.refuse_body(method, request))
        yield request


def _abort(context: grpc.ServicerContext, error: SecurityError) -> NoReturn:
    context.abort_with_status(
        errors.refusal_status(
            error.code,
            error.reason.value,
            error.message,
            metadata=error.metadata,
            retry_delay_seconds=error.retry_delay_seconds,
        )
    )


def _behavior(handler: Handler) -> Behavior:
    behavior = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )
    assert behavior is not None
    return behavior


def _handler_like(
    handler: Handler, behavior: Behavior, deserializer: Callable[[bytes], object]
) -> Handler:
    """A handler of the same kind (streaming or not, each way) with another behavior."""
    factory = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return factory(behavior, deserializer, handler.response_serializer)
