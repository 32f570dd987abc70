"""Standard gRPC services: health checking, and reflection that lists and describes the documented contract."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from tests.helpers import BrokerProcess

CONTRACT = ("conveyor.v1.TaskService", "conveyor.v1.WorkerService", "grpc.health.v1.Health")


def test_health_check_of_the_whole_server_answers_serving(fast_broker: BrokerProcess) -> None:
    with grpc.insecure_channel(fast_broker.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        for service in ("conveyor.v1.TaskService", "conveyor.v1.WorkerService"):
            assert stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as caught:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services_and_describes_their_methods_and_messages(
    fast_broker: BrokerProcess,
) -> None:
    with grpc.insecure_channel(fast_broker.address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert set(CONTRACT) <= services
        assert "grpc.reflection.v1alpha.ServerReflection" in services

        pool = descriptor_pool.DescriptorPool(database)
        tasks = pool.FindServiceByName("conveyor.v1.TaskService")
        assert {m.name for m in tasks.methods} == {
            "EnqueueTask", "BatchEnqueueTasks", "GetTask", "WaitTask", "CancelTask", "ListTasks", "OpenSession"}
        reply = pool.FindMessageTypeByName("conveyor.v1.SessionReply")  # google/rpc/status.proto is served too
        assert reply.fields_by_name["error"].message_type.full_name == "google.rpc.Status"
        wait = tasks.methods_by_name["WaitTask"]
        assert wait.input_type.full_name == "conveyor.v1.WaitTaskRequest"
        assert wait.output_type.full_name == "conveyor.v1.WaitTaskResponse"
        connect = pool.FindServiceByName("conveyor.v1.WorkerService").methods_by_name["Connect"]
        assert connect.input_type.full_name == "conveyor.v1.WorkerMessage"
        spec = pool.FindMessageTypeByName("conveyor.v1.TaskSpec")
        assert {"queue", "name", "payload", "priority", "run_at", "delay"} <= set(spec.fields_by_name)
        state = pool.FindEnumTypeByName("conveyor.v1.TaskState")
        assert state.values_by_number[0].name == "TASK_STATE_UNSPECIFIED"
        health = pool.FindServiceByName("grpc.health.v1.Health")
        assert "Check" in health.methods_by_name

        # `describe` shows the contract's comments: reflection serves the source info.
        file = descriptor_pb2.FileDescriptorProto.FromString(
            database.FindFileContainingSymbol("conveyor.v1.TaskService").SerializeToString())
        comments = {tuple(loc.path): loc.leading_comments for loc in file.source_code_info.location}
        service_index = [s.name for s in file.service].index("TaskService")
        assert "Submits, reads, awaits, cancels and lists tasks" in comments.get((6, service_index), "")
        documented_methods = [comments.get((6, service_index, 2, i), "").strip()
                              for i in range(len(file.service[service_index].method))]
        assert all(documented_methods), documented_methods


# The dev dependencies install grpcurl beside the interpreter; a grpcurl on PATH also serves.
GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")


@pytest.mark.skipif(GRPCURL is None, reason="grpcurl is not installed")
def test_grpcurl_lists_and_describes_the_services(fast_broker: BrokerProcess) -> None:
    assert GRPCURL is not None
    listed = subprocess.run([GRPCURL, "-plaintext", fast_broker.address, "list"],
                            capture_output=True, text=True, timeout=20, check=True).stdout.split()
    assert set(CONTRACT) <= set(listed)
    described = subprocess.run([GRPCURL, "-plaintext", fast_broker.address, "describe", "conveyor.v1.TaskSpec"],
                               capture_output=True, text=True, timeout=20, check=True).stdout
    assert "Task name" in described
    method = subprocess.run([GRPCURL, "-plaintext", fast_broker.address, "describe",
                             "conveyor.v1.TaskService.EnqueueTask"],
                            capture_output=True, text=True, timeout=20, check=True).stdout
    assert "Submits one task" in method
