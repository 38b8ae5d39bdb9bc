"""Kubernetes resource quantities ("500m", "1Gi") parsed to exact decimals, as ``resource.Quantity`` reads them."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Final

_QUANTITY_RE: Final = re.compile(
    r"^(?P<num>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?P<suffix>[KMGTPE]i|[numkMGTPE]|[eE][-+]?[0-9]{1,3})?$"
)
_SUFFIX_VALUES: Final[dict[str, Decimal]] = {
    "": Decimal(1), "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
    "P": Decimal("1e15"), "E": Decimal("1e18"),
    "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40),
    "Pi": Decimal(2**50), "Ei": Decimal(2**60),
}


def parse_quantity(text: str) -> Decimal:
    """A Kubernetes resource quantity ("500m", "1.5", "128Mi", "1e3") as a Decimal; ValueError if not one.

    Negative quantities are refused: no container resource can be negative.
    """
    match = _QUANTITY_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a quantity (e.g. '250m', '1', '512Mi', '2Gi')")
    suffix = match["suffix"] or ""
    try:
        number = Decimal(match["num"])
        scale = Decimal(10) ** int(suffix[1:]) if suffix[:1] in ("e", "E") else _SUFFIX_VALUES[suffix]
    except (InvalidOperation, KeyError) as exc:
        raise ValueError(f"{text!r} is not a quantity") from exc
    return number * scale
