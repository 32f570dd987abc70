"""The contract's own rules: generated code up to date, everything documented, house proto style."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from google.rpc import status_pb2
from grpc_tools import protoc  # type: ignore[import-untyped]

from tests.helpers import REPO_ROOT

PROTO_ROOT = REPO_ROOT / "protos"
PROTO_FILES = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in (PROTO_ROOT / "conveyor" / "v1").glob("*.proto"))

# Field numbers inside descriptor.proto, used to address comments in SourceCodeInfo.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MSG_FIELD, _MSG_NESTED, _MSG_ENUM, _MSG_ONEOF = 2, 3, 4, 8
_ENUM_VALUE = 2
_SERVICE_METHOD = 2

# Bidi streams carry one envelope per direction instead of a Request/Response pair.
STREAM_ENVELOPES = {"conveyor.v1.WorkerService.Connect": ("WorkerMessage", "BrokerMessage"),
                    "conveyor.v1.TaskService.OpenSession": ("SessionRequest", "SessionResponse")}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[descriptor_pb2.FileDescriptorProto]:
    """The contract's files as descriptors, comments included (protoc --include_source_info)."""
    out = tmp_path_factory.mktemp("descriptors") / "set.pb"
    well_known = str(resources.files("grpc_tools") / "_proto")
    googleapis = str(Path(status_pb2.__file__).resolve().parents[2])  # google/rpc/status.proto
    code = protoc.main([
        "grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", f"-I{googleapis}", "--include_source_info",
        f"--descriptor_set_out={out}", *PROTO_FILES,
    ])
    assert code == 0, "protoc failed on the contract"
    descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return list(descriptor_set.file)


def test_there_are_protos_to_check() -> None:
    assert {"conveyor/v1/task.proto", "conveyor/v1/task_service.proto",
            "conveyor/v1/worker_service.proto"} <= set(PROTO_FILES)


def test_generated_code_matches_the_protos() -> None:
    result = subprocess.run(
        [sys.executable, str(PROTO_ROOT / "generate.py"), "--check"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, f"stale generated code; run `make proto`:\n{result.stderr}"


def test_every_file_is_in_package_conveyor_v1(files: list[descriptor_pb2.FileDescriptorProto]) -> None:
    for f in files:
        assert f.package == "conveyor.v1", f.name
        assert f.syntax == "proto3", f.name


Element = tuple[str, tuple[int, ...]]  # readable name, SourceCodeInfo path


def _enum_elements(e: descriptor_pb2.EnumDescriptorProto, scope: str, path: tuple[int, ...]) -> Iterator[Element]:
    yield f"enum {scope}{e.name}", path
    for i, v in enumerate(e.value):
        yield f"enum value {scope}{e.name}.{v.name}", (*path, _ENUM_VALUE, i)


def _message_elements(m: descriptor_pb2.DescriptorProto, scope: str, path: tuple[int, ...]) -> Iterator[Element]:
    if m.options.map_entry:  # synthesized for a map<,> field, which carries the comment
        return
    name = f"{scope}{m.name}"
    yield f"message {name}", path
    for i, field in enumerate(m.field):
        yield f"field {name}.{field.name}", (*path, _MSG_FIELD, i)
    for i, oneof in enumerate(m.oneof_decl):
        yield f"oneof {name}.{oneof.name}", (*path, _MSG_ONEOF, i)
    for i, nested in enumerate(m.nested_type):
        yield from _message_elements(nested, f"{name}.", (*path, _MSG_NESTED, i))
    for i, e in enumerate(m.enum_type):
        yield from _enum_elements(e, f"{name}.", (*path, _MSG_ENUM, i))


def _elements(f: descriptor_pb2.FileDescriptorProto) -> Iterator[Element]:
    """Every service, rpc, message, field, oneof, enum and enum value of one file."""
    for i, m in enumerate(f.message_type):
        yield from _message_elements(m, "", (_FILE_MESSAGE, i))
    for i, e in enumerate(f.enum_type):
        yield from _enum_elements(e, "", (_FILE_ENUM, i))
    for i, s in enumerate(f.service):
        yield f"service {s.name}", (_FILE_SERVICE, i)
        for j, method in enumerate(s.method):
            yield f"rpc {s.name}.{method.name}", (_FILE_SERVICE, i, _SERVICE_METHOD, j)


def test_every_element_has_a_comment(files: list[descriptor_pb2.FileDescriptorProto]) -> None:
    missing = []
    for f in files:
        comments = {
            tuple(loc.path): (loc.leading_comments + loc.trailing_comments).strip()
            for loc in f.source_code_info.location
        }
        missing += [f"{f.name}: {name}" for name, path in _elements(f) if not comments.get(path)]
    assert not missing, "undocumented:\n" + "\n".join(missing)


def _enums(files: list[descriptor_pb2.FileDescriptorProto]) -> Iterator[descriptor_pb2.EnumDescriptorProto]:
    def nested(m: descriptor_pb2.DescriptorProto) -> Iterator[descriptor_pb2.EnumDescriptorProto]:
        yield from m.enum_type
        for n in m.nested_type:
            yield from nested(n)

    for f in files:
        yield from f.enum_type
        for m in f.message_type:
            yield from nested(m)


def _upper_snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()


def test_enums_start_with_unspecified_zero_and_prefix_every_value(
    files: list[descriptor_pb2.FileDescriptorProto],
) -> None:
    enums = list(_enums(files))
    assert enums
    for e in enums:
        prefix = _upper_snake(e.name) + "_"
        first = e.value[0]
        assert (first.name, first.number) == (prefix + "UNSPECIFIED", 0), e.name
        for v in e.value:
            assert v.name.startswith(prefix), f"{e.name}.{v.name} lacks the prefix {prefix}"


def test_every_rpc_has_its_own_request_and_response(files: list[descriptor_pb2.FileDescriptorProto]) -> None:
    used: dict[str, str] = {}
    for f in files:
        for service in f.service:
            for method in service.method:
                full = f"{f.package}.{service.name}.{method.name}"
                request = method.input_type.rsplit(".", 1)[-1]
                response = method.output_type.rsplit(".", 1)[-1]
                if full in STREAM_ENVELOPES:
                    assert method.client_streaming and method.server_streaming, full
                    assert (request, response) == STREAM_ENVELOPES[full]
                else:
                    assert not method.client_streaming, f"{full}: unexpected client stream"
                    assert (request, response) == (f"{method.name}Request", f"{method.name}Response"), full
                for message in (request, response):
                    assert message not in used, f"{message} used by both {used[message]} and {full}"
                    used[message] = full
    assert used


def test_field_names_are_snake_case(files: list[descriptor_pb2.FileDescriptorProto]) -> None:
    def fields(m: descriptor_pb2.DescriptorProto) -> Iterator[str]:
        for field in m.field:
            yield f"{m.name}.{field.name}"
        for n in m.nested_type:
            yield from fields(n)

    bad = [name for f in files for m in f.message_type for name in fields(m)
           if not re.fullmatch(r"[a-z][a-z0-9_]*", name.rsplit(".", 1)[-1])]
    assert not bad, bad


def test_python_package_mirrors_the_proto_tree() -> None:
    generated = Path(PROTO_ROOT / "conveyor" / "v1")
    for proto in PROTO_FILES:
        stem = Path(proto).stem
        assert (generated / f"{stem}_pb2.py").exists(), stem
        assert (generated / f"{stem}_pb2.pyi").exists(), stem
