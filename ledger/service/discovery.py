"""Health checking (Check, Watch and List) and server reflection, versions v1alpha and v1.

grpcio-health-checking's HealthServicer has no List (the call answers UNIMPLEMENTED and logs
a traceback), and grpcio-reflection serves only v1alpha. Reflection v1 is wire-identical to
v1alpha (same messages, fields and numbers, another package), so one reflection servicer
answers both: under the v1 name it decodes and encodes with v1alpha's message classes, and
a v1 file descriptor, built from v1alpha's with the package renamed, lets reflection
describe the v1 service itself. That descriptor lives in a private pool, layered over the
default one, so it can never clash with a grpcio-reflection that ships v1 some day.
"""

# ruff: noqa: N802  # gRPC and protobuf name these methods (List, FindFileByName...)
from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from ledger.service import errors

health_service_name: str = health.SERVICE_NAME
reflection_v1alpha_service_name: str = reflection.SERVICE_NAME
reflection_v1_service_name = "grpc.reflection.v1.ServerReflection"
reflection_v1_file_name = "grpc/reflection/v1/reflection.proto"
# The health protocol's own bound: past it, List answers RESOURCE_EXHAUSTED.
health_services_listed_max = 100

T = TypeVar("T")

_v1alpha_package = "grpc.reflection.v1alpha"
_v1_package = "grpc.reflection.v1"


class HealthServicer(health.HealthServicer):
    """grpcio-health-checking's servicer, plus List over the statuses it was given."""

    def __init__(self) -> None:
        super().__init__()
        # Taken before the base class's own lock, never after it, so the two cannot deadlock.
        self._statuses_lock = threading.RLock()
        serving = health_pb2.HealthCheckResponse.SERVING
        self._statuses: dict[str, int] = {health.OVERALL_HEALTH: serving}
        self._shutting_down = False

    def set(self, service: str, status: int) -> None:
        with self._statuses_lock:
            super().set(service, status)
            if not self._shutting_down:  # as the base class, which ignores it from then on
                self._statuses[service] = status

    def enter_graceful_shutdown(self) -> None:
        with self._statuses_lock:
            super().enter_graceful_shutdown()  # sets every service NOT_SERVING through set()
            self._shutting_down = True

    def List(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._statuses_lock:
            statuses = dict(self._statuses)
        if len(statuses) > health_services_listed_max:
            context.abort_with_status(
                errors.refusal_status(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "TOO_MANY_SERVICES",
                    f"more than {health_services_listed_max} services; use Check per service",
                )
            )
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in statuses.items()
            }
        )


def enable_discovery(
    server: grpc.Server,
    service_names: Iterable[str],
    health_servicer: HealthServicer | None = None,
) -> HealthServicer:
    """Serves health (every service and "" SERVING) and reflection v1alpha and v1 on server.

    Returns the health servicer (the one given, or a new one), for the server to report
    NOT_SERVING when it drains.
    """
    services = tuple(service_names)
    if health_servicer is None:
        health_servicer = HealthServicer()
    for service in (health.OVERALL_HEALTH, *services):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    listed = (
        *services,
        health_service_name,
        reflection_v1alpha_service_name,
        reflection_v1_service_name,
    )
    reflection_servicer = reflection.ReflectionServicer(listed, pool=_LayeredPool())
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflection_servicer, server)
    v1_handler = grpc.stream_stream_rpc_method_handler(
        reflection_servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                reflection_v1_service_name, {"ServerReflectionInfo": v1_handler}
            ),
        )
    )
    return health_servicer


@functools.cache
def reflection_v1_file() -> FileDescriptor:
    """grpc/reflection/v1/reflection.proto, in a pool of its own (it imports nothing)."""
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = reflection_v1_file_name
    proto.package = _v1_package
    # The options of the published v1 file, for clients that generate code from reflection.
    proto.options.Clear()
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.java_outer_classname = "ServerReflectionProto"
    proto.options.java_multiple_files = True
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # message fields only; setting "" would add one
                field.type_name = _v1_name(field.type_name)
    for service in proto.service:
        for method in service.method:
            method.input_type = _v1_name(method.input_type)
            method.output_type = _v1_name(method.output_type)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return pool.FindFileByName(reflection_v1_file_name)


def _v1_name(type_name: str) -> str:
    """`.grpc.reflection.v1alpha.X` as `.grpc.reflection.v1.X`."""
    prefix = f".{_v1alpha_package}."
    assert type_name.startswith(prefix), type_name  # the file refers only to its own types
    return f".{_v1_package}.{type_name.removeprefix(prefix)}"


class _LayeredPool:
    """The lookups reflection makes, in the default pool and then in reflection v1's pool."""

    def __init__(self) -> None:
        self._pools = (descriptor_pool.Default(), reflection_v1_file().pool)

    def FindFileByName(self, name: str) -> FileDescriptor:
        return self._first(lambda pool: pool.FindFileByName(name), name)

    def FindFileContainingSymbol(self, symbol: str) -> FileDescriptor:
        try:
            return self._first(lambda pool: pool.FindFileContainingSymbol(symbol), symbol)
        except KeyError:
            # The upb pool does not find a method (`pkg.Service.Method`), which clients such
            # as grpcurl ask for: it is in its service's file.
            service_name, _, method = symbol.rpartition(".")
            service = self._first(lambda pool: pool.FindServiceByName(service_name), symbol)
            if method not in service.methods_by_name:
                raise
            return service.file

    def FindMessageTypeByName(self, name: str) -> Descriptor:
        return self._first(lambda pool: pool.FindMessageTypeByName(name), name)

    # A message's extensions live in the pool that holds the message.
    def FindExtensionByNumber(self, message: Descriptor, number: int) -> FieldDescriptor:
        return message.file.pool.FindExtensionByNumber(message, number)

    def FindAllExtensions(self, message: Descriptor) -> list[FieldDescriptor]:
        return list(message.file.pool.FindAllExtensions(message))

    def _first(self, find: Callable[[descriptor_pool.DescriptorPool], T], name: str) -> T:
        for pool in self._pools:
            try:
                return find(pool)
            except KeyError:
                continue
        raise KeyError(name)
