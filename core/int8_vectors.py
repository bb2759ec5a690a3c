"""bigint arrays sent to PostgreSQL straight from numpy, in one operation instead of one per element.

asyncpg encodes an array parameter element by element, with an abstract-base-class check on
each (~0.25 µs an element, measured; a similarity check sends three arrays of ~2,300). A
parameter cast to the domain ``int8_vector`` (a ``bigint[]`` under a name of its own) is
encoded here instead: PostgreSQL names the domain as the parameter's type, so this codec
serves those parameters alone, while every ``bigint[]`` result and every other array
parameter keep asyncpg's own codec. asyncpg refuses custom codecs on array and domain types
through ``set_type_codec``; the codec is set through the connection settings that method
itself uses, the first time a connection sends such a parameter (``prepare``).

Without the codec (a statement through SQLAlchemy's session, EXPLAIN in a test) the domain
takes lists like any ``bigint[]``.
"""

from __future__ import annotations

import struct
from typing import Any
from weakref import WeakSet

import numpy as np

from core.models import INT8_VECTOR as DOMAIN

_INT8_OID = 20
# Each element as the binary array format has it: its length (always 8), then the value.
_ELEMENT = np.dtype([("length", ">i4"), ("value", ">i8")])

_prepared: WeakSet[Any] = WeakSet()


def encode(values: Any) -> bytes:
    """A one-dimensional sequence of integers (a numpy array or a list) in PostgreSQL's binary array format."""
    array = np.asarray(values)
    if array.ndim != 1 or (array.size and array.dtype.kind != "i"):
        raise TypeError(f"{DOMAIN} takes a one-dimensional sequence of integers, not {type(values).__name__}")
    if not array.size:
        return struct.pack("!iii", 0, 0, _INT8_OID)  # no dimensions
    elements = np.empty(array.size, _ELEMENT)
    elements["length"] = 8
    elements["value"] = array
    # Dimensions, no nulls, the element type; the one dimension's length and lower bound.
    return struct.pack("!iiiii", 1, 0, _INT8_OID, array.size, 1) + elements.tobytes()


def _not_read(_: bytes) -> Any:
    raise TypeError(f"PostgreSQL reports a {DOMAIN} result as bigint[]: this codec only sends")


async def prepare(connection: Any) -> None:
    """Set the codec on ``connection`` (asyncpg's), once; before its first statement that sends one."""
    if connection in _prepared:
        return
    oid = await connection.fetchval("SELECT to_regtype($1)::oid", DOMAIN)
    if oid is not None:  # a schema without it fails the statement that casts to it, as it should
        connection.get_settings().add_python_codec(oid, DOMAIN, "public", [], "scalar", encode, _not_read, "binary")
    _prepared.add(connection)
