"""Regenerates the Python code for the Conveyor protos (run by `make proto`).

The proto tree mirrors the Python package (`protos/conveyor/v1/x.proto` becomes
the module `conveyor.v1.x_pb2`), so the generated imports work unpatched.
`--check` regenerates into a temporary folder and fails if the committed files
differ, which keeps the committed code honest.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from google.rpc import status_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent
PACKAGE = ROOT / "conveyor" / "v1"
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", ".binpb")
# With comments (source info) and imports: what server reflection serves, so `grpcurl describe`
# shows the documentation.
DESCRIPTOR_SET = "conveyor_v1_descriptor_set.binpb"


def generate(out_dir: Path) -> list[Path]:
    """Runs protoc on every .proto under conveyor/v1, writing into `out_dir`."""
    protos = sorted(p.relative_to(ROOT).as_posix() for p in PACKAGE.glob("*.proto"))
    well_known = str(resources.files("grpc_tools") / "_proto")
    # google/rpc/status.proto, shipped with googleapis-common-protos (the google.rpc package).
    googleapis = str(Path(status_pb2.__file__).resolve().parents[2])
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"-I{well_known}",
        f"-I{googleapis}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--descriptor_set_out={out_dir / 'conveyor' / 'v1' / DESCRIPTOR_SET}",
        "--include_source_info",
        "--include_imports",
        *protos,
    ]
    (out_dir / "conveyor" / "v1").mkdir(parents=True, exist_ok=True)
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(p for p in (out_dir / "conveyor" / "v1").iterdir() if p.name.endswith(SUFFIXES))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed code is stale")
    check = parser.parse_args().check
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = [p.name for p in fresh if not (PACKAGE / p.name).exists()
                 or not filecmp.cmp(p, PACKAGE / p.name, shallow=False)]
        committed = {p.name for p in PACKAGE.iterdir() if p.name.endswith(SUFFIXES)}
        extra = sorted(committed - {p.name for p in fresh})
        if check:
            if stale or extra:
                print(f"generated code is stale: {stale + extra}; run `make proto`", file=sys.stderr)
                return 1
            return 0
        for p in fresh:
            shutil.copyfile(p, PACKAGE / p.name)
        for name in extra:
            (PACKAGE / name).unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
