"""Server reflection that serves the documented contract, so `grpcurl describe` shows the comments.

Generated `_pb2` modules carry descriptors without source info (no comments). Reflection here
serves the descriptor set `make proto` writes with `--include_source_info`, plus the health and
reflection services' own files.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from typing import Any

from google.protobuf import descriptor, descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

DESCRIPTOR_SET = "conveyor_v1_descriptor_set.binpb"


class _DocumentedFile:
    """A file descriptor whose CopyToProto keeps the source info (comments) it was built from."""

    def __init__(self, file: descriptor.FileDescriptor, protos: dict[str, descriptor_pb2.FileDescriptorProto]) -> None:
        self._file = file
        self._protos = protos

    @property
    def name(self) -> str:
        return str(self._file.name)

    @property
    def dependencies(self) -> list[_DocumentedFile]:
        return [_DocumentedFile(d, self._protos) for d in self._file.dependencies]

    def CopyToProto(self, proto: descriptor_pb2.FileDescriptorProto) -> None:
        original = self._protos.get(self._file.name)
        if original is None:
            self._file.CopyToProto(proto)
        else:
            proto.CopyFrom(original)


class _Pool:
    """The descriptor pool reflection reads: documented files, and `package.Service.Method` symbols
    resolved too (grpcurl asks for them)."""

    def __init__(self, pool: descriptor_pool.DescriptorPool, protos: dict[str, descriptor_pb2.FileDescriptorProto]):
        self._pool = pool
        self._protos = protos

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    def FindFileByName(self, name: str) -> _DocumentedFile:
        return _DocumentedFile(self._pool.FindFileByName(name), self._protos)

    def FindFileContainingSymbol(self, symbol: str) -> _DocumentedFile:
        try:
            file = self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            service_name, _, method = symbol.rpartition(".")
            service = self._pool.FindServiceByName(service_name)
            if method not in service.methods_by_name:
                raise
            file = service.file
        return _DocumentedFile(file, self._protos)


def documented_pool() -> Any:
    """A pool of the conveyor.v1 files with their comments, plus health and reflection."""
    pool = descriptor_pool.DescriptorPool()
    protos: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    data = (resources.files("conveyor.v1") / DESCRIPTOR_SET).read_bytes()
    for file in descriptor_pb2.FileDescriptorSet.FromString(data).file:
        pool.Add(file)
        protos[file.name] = file
    for module_descriptor in (health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR):
        proto = descriptor_pb2.FileDescriptorProto()
        module_descriptor.CopyToProto(proto)
        pool.Add(proto)
    return _Pool(pool, protos)


def enable(service_names: Iterable[str], server: Any) -> None:
    """Serves reflection for `service_names` (the reflection service itself is added)."""
    reflection.enable_server_reflection((*service_names, reflection.SERVICE_NAME), server, pool=documented_pool())
