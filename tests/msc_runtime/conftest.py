"""Fixtures of the msc-runtime tests: committed graphs, their PyTorch outputs, metadata edits.

These tests run in an environment holding only msc-runtime (numpy, ONNX Runtime, PyAV,
pytest) and in the workspace one. `fixtures/` is written by `make_fixtures.py` (root env).
When torch was not imported before the session (an environment without the root
conftest's torch), the session fails if anything imported it by the end.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CPU = ["CPUExecutionProvider"]
TORCH_AT_START = "torch" in sys.modules


def pytest_sessionfinish(session, exitstatus):
    if not TORCH_AT_START and "torch" in sys.modules:
        print("\nmsc-runtime tests: 'torch' was imported during the session (msc_runtime must never import it)",
              file=sys.stderr)
        session.exitstatus = 1


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def expected() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "expected.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def manifest() -> dict:
    return json.loads((FIXTURES / "manifest.json").read_text())


@pytest.fixture
def need(expected):
    """`need(*keys)`: skip unless the fixtures hold `keys` (older fixtures lack the encoder's)."""

    def check(*keys: str) -> None:
        missing = [k for k in keys if k not in expected]
        if missing:
            pytest.skip(f"the fixtures lack {missing}: regenerate them with make_fixtures.py once the exporter exists")

    return check


# --------------------------------------------------------------------------- metadata edits
# A ModelProto's metadata_props is its field 14 (StringStringEntryProto: key = 1, value = 2).
# Editing the wire format directly keeps these tests free of the `onnx` package.


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


def _top_level_fields(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """(field number, raw bytes of the whole field, payload of a length-delimited field)."""
    fields, pos = [], 0
    while pos < len(data):
        start = pos
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        payload = b""
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            payload = data[pos:pos + length]
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unexpected wire type {wire}")
        fields.append((number, data[start:pos], payload))
    return fields


def read_metadata(data: bytes) -> dict[str, str]:
    out = {}
    for number, _, payload in _top_level_fields(data):
        if number == 14:
            entry = {n: p.decode() for n, _, p in _top_level_fields(payload)}
            out[entry.get(1, "")] = entry.get(2, "")
    return out


def with_metadata(data: bytes, metadata: dict[str, str]) -> bytes:
    """The model bytes with their metadata_props replaced by `metadata`."""
    kept = b"".join(raw for number, raw, _ in _top_level_fields(data) if number != 14)
    entries = b"".join(_field(14, _field(1, k.encode()) + _field(2, v.encode())) for k, v in metadata.items())
    return kept + entries


@pytest.fixture
def edited(tmp_path):
    """`edited(name, change)`: a copy of fixture `name` whose metadata dict `change` edits in place."""

    def make(name: str, change, out_name: str | None = None) -> Path:
        data = (FIXTURES / name).read_bytes()
        metadata = read_metadata(data)
        change(metadata)
        path = tmp_path / (out_name or name)
        path.write_bytes(with_metadata(data, metadata))
        return path

    return make
