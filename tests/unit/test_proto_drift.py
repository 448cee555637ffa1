"""The checked-in generated code must equal what `make proto` produces from the .proto."""

from __future__ import annotations

import shutil
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ("fedctx_pb2.py", "fedctx_pb2.pyi", "fedctx_pb2_grpc.py")


def test_generated_code_matches_proto(tmp_path: Path) -> None:
    source = tmp_path / "proto" / "fedctx" / "v1"
    source.mkdir(parents=True)
    shutil.copy(ROOT / "proto/fedctx/v1/fedctx.proto", source)
    status = protoc.main([
        "grpc_tools.protoc", f"-I{tmp_path}", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
        f"--grpc_python_out={tmp_path}", str(source / "fedctx.proto"),
    ])
    assert status == 0
    for name in GENERATED:
        fresh = (source / name).read_text()
        checked_in = (ROOT / "proto/fedctx/v1" / name).read_text()
        assert fresh == checked_in, f"{name} drifted from fedctx.proto: run `make proto`"


def test_proto_package_is_this_repository() -> None:
    import proto

    assert Path(proto.__file__).resolve().parent == ROOT / "proto", (
        "another distribution named 'proto' (e.g. proto-plus) shadows fedctx's"
    )
