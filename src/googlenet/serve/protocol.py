"""The Open Inference Protocol (KServe v2) on the wire: an ``infer`` request's named tensors read from JSON and
from Triton's binary tensor extension, and the response's tensors written back the same way.

The same client code then works against ``googlenet serve``, Triton and KServe. ``tritonclient`` sends
binary tensors by default: the body is the JSON header (``Inference-Header-Content-Length`` bytes long)
followed by each binary input's raw bytes, in order. A BYTES element is a 4-byte little-endian length and
then the bytes.

This module knows the wire format only; googlenet.serve.protocol_routes decides what the model takes and
answers.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from googlenet.serve.images import UploadError

# The datatypes this server reads or writes, as numpy dtypes (little-endian, as the protocol's binary data is).
NUMERIC: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "INT64": np.dtype("<i8")}
MAX_DIMS = 8
# The largest JSON part of a request. Parsed JSON takes up to about 8 bytes of memory per byte (a list entry
# for every "0,"), so a body the size of the upload limit must not be JSON; tensors that large travel as
# binary data, tritonclient's default.
JSON_LIMIT = 8 * 2**20


def refuse(message: str) -> UploadError:
    return UploadError(400, message)


@dataclass
class Requested:
    """An output a client asked for: as binary data or JSON, and optionally as Triton's classification
    (the top ``classification`` values as "value:index:label" strings)."""

    binary: bool
    classification: int = 0


@dataclass
class InferRequest:
    inputs: dict[str, np.ndarray]  # numeric arrays shaped as declared; BYTES as a 1-D object array of bytes
    outputs: dict[str, Requested]  # empty: every output, as `binary_by_default` says
    parameters: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    binary_by_default: bool = False


def parse_infer(body: bytes, header_length: str | None) -> InferRequest:
    """An ``infer`` request body: JSON only, or (``header_length`` given) a JSON header and binary tensors."""
    if header_length is None:
        head, rest = body, b""
    else:
        if not (header_length.isascii() and header_length.isdigit() and int(header_length) <= len(body)):
            raise refuse(f"Inference-Header-Content-Length {header_length[:20]!r} is not a length within the body")
        head, rest = body[: int(header_length)], body[int(header_length) :]
    if len(head) > JSON_LIMIT:
        raise UploadError(
            413, f"the request's JSON is over {JSON_LIMIT // 2**20} MB: send large tensors as binary data"
        )
    try:
        request = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise refuse(f"the inference request is not JSON: {error}") from None
    except RecursionError:  # lists nested thousands deep
        raise refuse("the inference request nests its JSON too deeply") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise refuse('the inference request needs "inputs": a list of named tensors')
    parameters = _object(request.get("parameters", {}), "the request's parameters")
    offset, inputs = 0, {}
    for tensor in request["inputs"]:
        name, array, offset = _read_input(tensor, rest, offset)
        if name in inputs:
            raise refuse(f"input {name!r} is given twice")
        inputs[name] = array
    if offset != len(rest):
        raise refuse(f"the body has {len(rest) - offset:,} bytes of binary data that no input claims")
    outputs: dict[str, Requested] = {}
    default_binary = parameters.get("binary_data_output", False) is True
    for wanted in _list(request.get("outputs", []), "outputs"):
        wanted = _object(wanted, "an entry of outputs")
        output_name = wanted.get("name")
        if not isinstance(output_name, str):
            raise refuse("every requested output needs a name")
        options = _object(wanted.get("parameters", {}), f"output {output_name!r}'s parameters")
        classes = options.get("classification", 0)
        if not (isinstance(classes, int) and not isinstance(classes, bool) and classes >= 0):
            raise refuse(f"output {output_name!r}: classification must be a whole number; got {str(classes)[:20]!r}")
        outputs[output_name] = Requested(options.get("binary_data", default_binary) is True, classes)
    request_id = request.get("id")
    return InferRequest(
        inputs, outputs, parameters, request_id if isinstance(request_id, str) else None, default_binary
    )


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise refuse(f"{what} must be a JSON object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise refuse(f"{what} must be a JSON list")
    return value


def _read_input(tensor: Any, binary: bytes, offset: int) -> tuple[str, np.ndarray, int]:
    """One input tensor -> (name, array, the offset of the next binary input)."""
    tensor = _object(tensor, "an entry of inputs")
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if not isinstance(name, str) or not name:
        raise refuse("every input needs a name")
    if datatype != "BYTES" and datatype not in NUMERIC:
        raise refuse(f"input {name!r}: datatype {str(datatype)[:20]!r} is not one this server reads (FP32, BYTES)")
    if not (
        isinstance(shape, list)
        and 0 < len(shape) <= MAX_DIMS
        and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in shape)
    ):
        raise refuse(f"input {name!r}: shape must be a list of 1 to {MAX_DIMS} sizes, each 0 or more")
    count = math.prod(shape)
    size = _object(tensor.get("parameters", {}), f"input {name!r}'s parameters").get("binary_data_size")
    if size is not None:
        if not (isinstance(size, int) and 0 <= size <= len(binary) - offset):
            raise refuse(f"input {name!r}: binary_data_size {size!r} runs past the end of the body")
        raw = binary[offset : offset + size]
        array = _bytes_from_binary(name, raw, count) if datatype == "BYTES" else _numeric(name, raw, datatype, count)
        return name, array.reshape(shape), offset + size
    if "data" not in tensor:
        raise refuse(f"input {name!r} has neither data nor binary_data_size")
    flat = _flatten(tensor["data"], name)
    if len(flat) != count:
        raise refuse(f"input {name!r}: shape {shape} holds {count:,} values but data has {len(flat):,}")
    if datatype == "BYTES":
        return name, _bytes_from_json(name, flat).reshape(shape), offset
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in flat):
        raise refuse(f"input {name!r}: {datatype} data must be numbers")
    try:
        array = np.asarray(flat, dtype=NUMERIC[datatype])
    except OverflowError:  # a JSON integer past what the datatype holds
        raise refuse(f"input {name!r}: a value is out of the range of {datatype}") from None
    return name, array.reshape(shape), offset


def _flatten(data: Any, name: str) -> list[Any]:
    """The protocol allows the data flat (row-major) or nested by the shape."""
    if not isinstance(data, list):
        raise refuse(f"input {name!r}: data must be a list")
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:  # no recursion: a deeply nested list must not exhaust the stack
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) > MAX_DIMS:
                    raise refuse(f"input {name!r}: data is nested deeper than {MAX_DIMS} levels")
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _numeric(name: str, raw: bytes, datatype: str, count: int) -> np.ndarray:
    dtype = NUMERIC[datatype]
    if len(raw) != count * dtype.itemsize:
        raise refuse(f"input {name!r}: {len(raw):,} bytes of binary data for {count:,} {datatype} values")
    return np.frombuffer(raw, dtype=dtype).copy()


def _bytes_from_binary(name: str, raw: bytes, count: int) -> np.ndarray:
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise refuse(f"input {name!r}: a BYTES element's length is cut off")
        (length,) = struct.unpack_from("<I", raw, offset)
        if offset + 4 + length > len(raw):
            raise refuse(f"input {name!r}: a BYTES element of {length:,} bytes runs past its binary data")
        items.append(raw[offset + 4 : offset + 4 + length])
        offset += 4 + length
    if len(items) != count:
        raise refuse(f"input {name!r}: its shape holds {count:,} elements but the binary data has {len(items):,}")
    return _object_array(items)


def _bytes_from_json(name: str, flat: list[Any]) -> np.ndarray:
    """BYTES elements in JSON are strings; binary files travel in them base64-encoded."""
    items = []
    for value in flat:
        if not isinstance(value, str):
            raise refuse(f"input {name!r}: BYTES data in JSON must be strings (base64 for binary files)")
        try:
            items.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            raise refuse(f"input {name!r}: a BYTES element in JSON is not base64") from None
    return _object_array(items)


def _object_array(items: list[bytes]) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


@dataclass
class OutputTensor:
    name: str
    datatype: str  # FP32, INT64 or BYTES
    array: np.ndarray  # numbers, or str/bytes objects for BYTES
    binary: bool


def encode_infer(
    model: str, version: str, outputs: list[OutputTensor], request_id: str | None
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the length of its JSON header."""
    described, blobs = [], []
    for output in outputs:
        entry: dict[str, Any] = {"name": output.name, "datatype": output.datatype, "shape": list(output.array.shape)}
        if output.binary:
            blob = _to_binary(output)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif output.datatype == "BYTES":
            entry["data"] = [_text(v) for v in output.array.reshape(-1)]
        else:
            entry["data"] = output.array.reshape(-1).tolist()
        described.append(entry)
    head: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": described}
    if request_id is not None:
        head["id"] = request_id
    header = json.dumps(head).encode()
    return (header + b"".join(blobs), len(header)) if blobs else (header, None)


def _to_binary(output: OutputTensor) -> bytes:
    if output.datatype != "BYTES":
        return np.ascontiguousarray(output.array, dtype=NUMERIC[output.datatype]).tobytes()
    parts = []
    for value in output.array.reshape(-1):
        data = value.encode() if isinstance(value, str) else bytes(value)
        parts.append(struct.pack("<I", len(data)) + data)
    return b"".join(parts)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else bytes(value).decode("utf-8", errors="replace")
