"""Discovery on a real server: health Check, Watch and List; reflection v1alpha and v1."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ledger.service.discovery import (
    HealthServicer,
    enable_discovery,
    reflection_v1_file,
    reflection_v1_service_name,
)
from timebank.ledger.v1 import ledger_pb2, views_pb2

ledger_service = ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name
view_service = views_pb2.DESCRIPTOR.services_by_name["LedgerViewService"].full_name
call_timeout_seconds = 10.0
everything = {
    ledger_service,
    view_service,
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
}
v1_info = f"/{reflection_v1_service_name}/ServerReflectionInfo"
# The v1 messages, made from discovery's own v1 descriptors: what a v1 client would use.
V1Request: Any = message_factory.GetMessageClass(
    reflection_v1_file().message_types_by_name["ServerReflectionRequest"]
)
V1Response: Any = message_factory.GetMessageClass(
    reflection_v1_file().message_types_by_name["ServerReflectionResponse"]
)


@pytest.fixture
def served() -> Iterator[tuple[grpc.Channel, HealthServicer]]:
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    health = enable_discovery(server, [ledger_service, view_service])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel, health
    finally:
        server.stop(grace=None)


def file_names(response: Any) -> set[str]:
    names = set()
    for serialized in response.file_descriptor_response.file_descriptor_proto:
        names.add(descriptor_pb2.FileDescriptorProto.FromString(serialized).name)
    return names


def test_health_list_answers_every_service_without_an_error(
    served: tuple[grpc.Channel, HealthServicer], caplog: pytest.LogCaptureFixture
) -> None:
    channel, health = served
    stub = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    statuses = stub.List(health_pb2.HealthListRequest(), timeout=call_timeout_seconds).statuses
    assert {name: answer.status for name, answer in statuses.items()} == {
        "": serving,
        ledger_service: serving,
        view_service: serving,
    }
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    # Check agrees, per service.
    check = stub.Check(health_pb2.HealthCheckRequest(service=view_service))
    assert check.status == serving
    # Draining: every service NOT_SERVING, in List as in Check; later changes are ignored.
    health.enter_graceful_shutdown()
    health.set(ledger_service, serving)
    statuses = stub.List(health_pb2.HealthListRequest(), timeout=call_timeout_seconds).statuses
    assert {answer.status for answer in statuses.values()} == {not_serving}
    check = stub.Check(health_pb2.HealthCheckRequest(service=ledger_service))
    assert check.status == not_serving


def test_reflection_v1alpha_lists_and_describes_services(
    served: tuple[grpc.Channel, HealthServicer],
) -> None:
    channel, _ = served
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    list_services, ledger_file, v1_file = stub.ServerReflectionInfo(
        iter(
            [
                reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=ledger_service),
                reflection_pb2.ServerReflectionRequest(
                    file_containing_symbol=reflection_v1_service_name
                ),
            ]
        ),
        timeout=call_timeout_seconds,
    )
    names = {service.name for service in list_services.list_services_response.service}
    assert names == everything
    assert "timebank/ledger/v1/ledger.proto" in file_names(ledger_file)
    assert file_names(v1_file) == {"grpc/reflection/v1/reflection.proto"}


def test_reflection_v1_lists_services_in_raw_bytes(
    served: tuple[grpc.Channel, HealthServicer],
) -> None:
    channel, _ = served
    raw = channel.stream_stream(v1_info, None, None)
    # list_services: "" is field 7, an empty string: bytes 3a 00.
    [answer] = list(raw(iter([bytes.fromhex("3a00")]), timeout=call_timeout_seconds))
    response = V1Response.FromString(answer)
    assert {service.name for service in response.list_services_response.service} == everything
    assert response.original_request.list_services == ""


def test_reflection_v1_describes_symbols_including_itself(
    served: tuple[grpc.Channel, HealthServicer],
) -> None:
    channel, _ = served
    stub = channel.stream_stream(
        v1_info,
        request_serializer=V1Request.SerializeToString,
        response_deserializer=V1Response.FromString,
    )
    answers = list(
        stub(
            iter(
                [
                    V1Request(file_containing_symbol=reflection_v1_service_name),
                    V1Request(file_containing_symbol=f"{view_service}.GetBankReport"),
                    V1Request(file_containing_symbol="grpc.health.v1.Health"),
                    V1Request(file_by_filename="grpc/reflection/v1/reflection.proto"),
                    V1Request(file_containing_symbol="timebank.ledger.v1.NoSuchThing"),
                    V1Request(file_containing_symbol=f"{view_service}.NoSuchMethod"),
                ]
            ),
            timeout=call_timeout_seconds,
        )
    )
    itself, views, health, by_name, unknown, unknown_method = answers
    [serialized] = itself.file_descriptor_response.file_descriptor_proto
    v1_proto = descriptor_pb2.FileDescriptorProto.FromString(serialized)
    assert (v1_proto.name, v1_proto.package) == (
        "grpc/reflection/v1/reflection.proto",
        "grpc.reflection.v1",
    )
    # The v1 file refers to its own messages, not v1alpha's.
    [service] = v1_proto.service
    assert service.method[0].input_type == ".grpc.reflection.v1.ServerReflectionRequest"
    assert all("v1alpha" not in field.type_name for m in v1_proto.message_type for field in m.field)
    # A method is found in its service's file, which comes with the ledger file it imports.
    assert {"timebank/ledger/v1/views.proto", "timebank/ledger/v1/ledger.proto"} <= file_names(
        views
    )
    assert "grpc_health/v1/health.proto" in file_names(health)
    assert file_names(by_name) == {"grpc/reflection/v1/reflection.proto"}
    not_found = grpc.StatusCode.NOT_FOUND.value[0]
    assert unknown.error_response.error_code == not_found
    assert unknown_method.error_response.error_code == not_found


def test_the_v1_descriptor_is_wire_identical_to_v1alpha() -> None:
    v1alpha = reflection_pb2.ServerReflectionRequest.DESCRIPTOR.file
    v1 = reflection_v1_file()
    assert list(v1.message_types_by_name) == list(v1alpha.message_types_by_name)
    for name, message in v1alpha.message_types_by_name.items():
        mine = v1.message_types_by_name[name]
        assert [(f.name, f.number, f.type) for f in mine.fields] == [
            (f.name, f.number, f.type) for f in message.fields
        ]
    request = reflection_pb2.ServerReflectionRequest(host="h", file_containing_symbol="x.Y")
    assert V1Request.FromString(request.SerializeToString()).file_containing_symbol == "x.Y"
