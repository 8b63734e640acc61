"""The wire between the trusted checker and the sandboxed program (``sandbox.py``). Stdlib only.

Shared, by source text, by both sides: the checker imports it, the sandboxed runner receives its text.

* **Frames**: an 8-byte big-endian length, then that many bytes of UTF-8 JSON. A reader gives up past a
  size limit or a deadline, so a flood or a silent program costs the reader nothing.
* **Values**: plain data only. JSON scalars stand for themselves, JSON lists for lists; everything else is
  a tagged object ``{"$": tag, ...}``: tuple, dict (as key/value pairs), set, frozenset, bytes, complex, int
  wider than :data:`BIG_INT_BITS` (as hex: decimal JSON stops at 4,300 digits),
  non-finite float, range, iterator (materialised), ndarray, and ``ref`` -- a handle to an object that stays
  on the program's side (an instance of a class the program defines, a function). The checker rebuilds
  values with the builtin types, so a comparison in the tests always runs the checker's own ``__eq__``,
  never one the program wrote.
"""

from __future__ import annotations

import base64
import json
import math
import os
import select
import struct
import time

MAX_DEPTH = 100
MAX_ITEMS = 10_000_000  # elements materialised from one iterator
BIG_INT_BITS = 1024  # ints wider than this cross as hex (HumanEval+ 83 and 139 compare ints of 10,000+ digits)


class WireError(Exception):
    """A broken, oversized or late frame, or a value that cannot cross."""


class WireTimeout(WireError):
    pass


# ----------------------------------------------------------------------------------------------- frames
def write_frame(fd: int, obj) -> None:
    data = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")
    buf = struct.pack(">Q", len(data)) + data
    view = memoryview(buf)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WireTimeout("no answer before the deadline")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                raise WireTimeout("no answer before the deadline")
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise WireError("the other side closed the channel")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(fd: int, *, limit: int, deadline: float | None = None):
    (size,) = struct.unpack(">Q", _read_exact(fd, 8, deadline))
    if size > limit:
        raise WireError(f"a message of {size} bytes is over the limit of {limit} bytes")
    try:
        return json.loads(_read_exact(fd, size, deadline).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise WireError(f"malformed message: {e}") from None


# ----------------------------------------------------------------------------------------------- values
def encode(x, to_ref, depth: int = 0):
    """Plain data -> JSON-able; anything else -> ``to_ref(x)`` (a ``{"$": "ref"}`` object) or an error."""
    if depth > MAX_DEPTH:
        raise WireError("value nested too deeply")
    d = depth + 1
    if x is None or x is True or x is False:
        return x
    t = type(x)
    if isinstance(x, int):
        v = int.__int__(x) if t is not int else x
        # JSON writes ints in decimal, which Python refuses past 4,300 digits (sys.int_info): a big one as hex
        return {"$": "int", "v": hex(v)} if v.bit_length() > BIG_INT_BITS else v
    if isinstance(x, float):
        v = float.__float__(x) if t is not float else x
        return v if math.isfinite(v) else {"$": "float", "v": repr(v)}
    if isinstance(x, str):
        return str.__str__(x) if t is not str else x
    if isinstance(x, tuple):
        return {"$": "tuple", "v": [encode(i, to_ref, d) for i in tuple.__iter__(x)]}
    if isinstance(x, list):
        return [encode(i, to_ref, d) for i in list.__iter__(x)]
    if isinstance(x, dict):
        return {"$": "dict", "v": [[encode(k, to_ref, d), encode(v, to_ref, d)] for k, v in dict.items(x)]}
    if isinstance(x, (set, frozenset)):
        tag = "frozenset" if isinstance(x, frozenset) else "set"
        return {"$": tag, "v": [encode(i, to_ref, d) for i in (frozenset.__iter__(x) if tag == "frozenset"
                                                                else set.__iter__(x))]}
    if isinstance(x, (bytes, bytearray)):
        return {"$": "bytes", "v": base64.b64encode(bytes(x)).decode("ascii")}
    if isinstance(x, complex):
        return {"$": "complex", "v": [encode(x.real, to_ref, d), encode(x.imag, to_ref, d)]}
    if isinstance(x, range):
        return {"$": "range", "v": [x.start, x.stop, x.step]}
    mod = getattr(t, "__module__", "") or ""
    if mod == "numpy" and hasattr(x, "tolist"):  # ndarray or numpy scalar
        if t.__name__ == "ndarray":
            return {"$": "ndarray", "dtype": str(x.dtype), "v": encode(x.tolist(), to_ref, d)}
        return encode(x.item(), to_ref, d)
    if hasattr(x, "__next__") and hasattr(x, "__iter__"):  # generator, map, zip, iterator
        items = []
        for i, item in enumerate(x):
            if i >= MAX_ITEMS:
                raise WireError("iterator too long")
            items.append(encode(item, to_ref, d))
        return {"$": "iter", "v": items}
    if to_ref is None:
        raise WireError(f"a {t.__name__} cannot be sent to the program")
    return to_ref(x)


def decode(x, from_ref, depth: int = 0):
    """The inverse of :func:`encode`, building builtin types only; refs through ``from_ref(id)``."""
    if depth > MAX_DEPTH:
        raise WireError("value nested too deeply")
    d = depth + 1
    if isinstance(x, list):
        return [decode(i, from_ref, d) for i in x]
    if not isinstance(x, dict):
        return x
    tag, v = x.get("$"), x.get("v")
    if tag == "tuple":
        return tuple(decode(i, from_ref, d) for i in v)
    if tag == "dict":
        return {decode(k, from_ref, d): decode(val, from_ref, d) for k, val in v}
    if tag == "set":
        return {decode(i, from_ref, d) for i in v}
    if tag == "frozenset":
        return frozenset(decode(i, from_ref, d) for i in v)
    if tag == "float":
        return float(v)
    if tag == "int":
        return int(str(v), 16)
    if tag == "bytes":
        return base64.b64decode(v)
    if tag == "complex":
        return complex(decode(v[0], from_ref, d), decode(v[1], from_ref, d))
    if tag == "range":
        return range(int(v[0]), int(v[1]), int(v[2]))
    if tag == "iter":
        return iter([decode(i, from_ref, d) for i in v])
    if tag == "ndarray":
        import numpy

        try:
            dtype = numpy.dtype(str(x["dtype"]))
        except (TypeError, ValueError):
            raise WireError(f"unknown array type {str(x['dtype'])[:40]!r}") from None
        # plain numbers or text only: a sub-array or record type ("(10**8,)f8", 100 bytes) would make one
        # element gigabytes in the checker; text takes its width from the values, not from the claimed type
        if dtype.subdtype is not None or dtype.fields is not None or dtype.kind not in "biufcUS":
            raise WireError(f"array type {str(dtype)[:40]!r} cannot cross")
        values = decode(v, from_ref, d)
        return numpy.array(values, dtype=dtype.kind) if dtype.kind in "US" else numpy.array(values, dtype=dtype)
    if tag == "ref":
        return from_ref(int(x["id"]))
    raise WireError(f"unknown value tag {tag!r}")


def describe(exc: BaseException, source: str, label: str, *, with_type: bool = True, limit: int = 400) -> str:
    """An exception as a verdict reason: ``Type: message (<label> line N)``, cut to ``limit`` characters before
    the line. N is the deepest traceback line in code compiled as ``source`` ("<program>", "<tests>"); a broken
    ``__str__`` (program code) does not break the description."""
    try:
        msg = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ in program code
        msg = "<unprintable>"
    name = type(exc).__name__
    tb, line = exc.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == source:
            line = tb.tb_lineno
        tb = tb.tb_next
    where = f" ({label} line {line})" if line else ""
    text = (f"{name}: {msg}" if msg else name) if with_type else msg
    return text[:limit] + where
