"""A type-faithful JSON encoding of database values.

JSON alone would turn a Decimal into a float, bytes into nothing and a timestamp into
a string that restores as text. Every value that JSON cannot carry exactly becomes a
one-key object tagged with ``$`` (``{"$dec": "1.10"}``); a real JSON object that has a
``$`` key is wrapped in ``{"$obj": ...}`` so it can never be mistaken for a tag.
Anything unknown is refused rather than guessed: a backup that restores different
values is worse than a backup that stops the deletion.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import ipaddress
import math
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

#: ints beyond this are written in hex: int <-> decimal str is capped at 4300 digits
_BIG = 2**63


class CodecError(ValueError):
    """A value the rows backup cannot encode (or a record it cannot decode) exactly."""


def _zone(tz: dt.tzinfo | None) -> str | None:
    """The IANA key of a named zone, so that restored values keep DST rules, not one offset."""
    return tz.key if isinstance(tz, ZoneInfo) else None


def encode(value: Any) -> Any:
    """A JSON-able form of ``value`` that :func:`decode` turns back into an equal value."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, enum.Enum):
        return encode(value.value)
    if isinstance(value, int):
        value = int(value)
        return value if -_BIG <= value < _BIG else {"$int": hex(value)}
    if isinstance(value, float):
        if math.isfinite(value):
            return float(value)
        return {"$float": repr(float(value))}
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, Decimal):
        return {"$dec": str(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dt.datetime):
        zone = _zone(value.tzinfo)
        if zone is not None:
            return {"$dtz": [value.isoformat(), zone, value.fold]}
        return {"$dt": value.isoformat()}
    if isinstance(value, dt.date):
        return {"$date": value.isoformat()}
    if isinstance(value, dt.time):
        return {"$time": value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {"$td": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, uuid.UUID):
        return {"$uuid": str(value)}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, tuple):
        return {"$tuple": [encode(v) for v in value]}
    if isinstance(value, dict):
        return _encode_dict(value)
    # an interface is a subclass of an address: test it first
    if isinstance(value, ipaddress.IPv4Interface | ipaddress.IPv6Interface):
        return {"$ipif": str(value)}
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return {"$ip": str(value)}
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return {"$ipnet": str(value)}
    raise CodecError(f"cannot encode a {type(value).__module__}.{type(value).__qualname__} value")


def _encode_dict(value: dict[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise CodecError(f"cannot encode a mapping with a non-string key {key!r}")
        out[str.__str__(key)] = encode(item)
    if any(key.startswith("$") for key in out):
        return {"$obj": out}
    return out


def _datetime(obj: Any) -> dt.datetime:
    text, zone, fold = obj
    value = dt.datetime.fromisoformat(text)
    try:
        return value.replace(tzinfo=ZoneInfo(zone), fold=fold)
    except (ZoneInfoNotFoundError, ValueError):
        return value  # keeps the exact offset the value was written with


_TAGS: dict[str, Callable[[Any], Any]] = {
    "$int": lambda s: int(s, 16),
    "$float": float,
    "$dec": Decimal,
    "$bytes": lambda s: base64.b64decode(s.encode("ascii"), validate=True),
    "$dt": dt.datetime.fromisoformat,
    "$dtz": _datetime,
    "$date": dt.date.fromisoformat,
    "$time": dt.time.fromisoformat,
    "$td": lambda v: dt.timedelta(days=v[0], seconds=v[1], microseconds=v[2]),
    "$uuid": uuid.UUID,
    "$tuple": lambda v: tuple(decode(i) for i in v),
    "$obj": lambda v: {k: decode(i) for k, i in v.items()},
    "$ip": ipaddress.ip_address,
    "$ipif": ipaddress.ip_interface,
    "$ipnet": ipaddress.ip_network,
}


def decode(obj: Any) -> Any:
    """The value that :func:`encode` encoded as ``obj``."""
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    if isinstance(obj, dict):
        if len(obj) == 1:
            ((key, payload),) = obj.items()
            if key.startswith("$"):
                tag = _TAGS.get(key)
                if tag is None:
                    raise CodecError(f"unknown tag {key!r}")
                try:
                    return tag(payload)
                except (TypeError, ValueError, AttributeError, ArithmeticError) as exc:
                    raise CodecError(f"bad {key} value {payload!r}: {exc}") from None
        if any(key.startswith("$") for key in obj):
            raise CodecError(f"bad record {obj!r}: '$' keys are reserved for tags")
        return {k: decode(v) for k, v in obj.items()}
    return obj
