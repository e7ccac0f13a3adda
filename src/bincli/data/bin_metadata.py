"""What a bin's metadata says beyond its label: products, their quantities, sizes and weights.

The label rule itself (EXPECTED_QUANTITY) stays in abid.py; this reads the per-product records
of `BIN_FCSKU_DATA` that `inspect` reports (ABID.md has the schema). Dimensions are kept only in
inches and weights only in pounds, the units ABID uses; anything else is counted, not converted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bincli.data import abid

PRODUCTS_KEY = "BIN_FCSKU_DATA"


@dataclass
class BinFacts:
    count: int  # EXPECTED_QUANTITY, the label
    products: int = 0  # distinct products (entries of BIN_FCSKU_DATA)
    quantity_sum: int | None = None  # sum of per-product quantity; None if any is missing
    weights_lb: list[float] = field(default_factory=list)  # one per product with a weight in pounds
    max_side_in: list[float] = field(default_factory=list)  # each product's longest side, inches
    other_units: int = 0  # dimensions or weights in units other than IN / pounds


def read_bin(path: Path) -> BinFacts | str:
    """The facts of one metadata file, or the reason it cannot be used."""
    try:
        with open(path, "rb") as f:
            doc = abid.parse_metadata(f.read(abid.MAX_METADATA_BYTES + 1))
    except OSError as exc:
        return f"unreadable metadata ({exc.strerror or type(exc).__name__})"
    except ValueError as exc:
        return str(exc)
    return bin_facts(doc)


def bin_facts(doc: dict[str, Any]) -> BinFacts:
    out = BinFacts(count=abid.label_of(doc))
    products = doc.get(PRODUCTS_KEY)
    if not isinstance(products, dict):
        return out
    out.products = len(products)
    total: int | None = 0
    for product in products.values():
        product = product if isinstance(product, dict) else {}
        qty = product.get("quantity")
        if isinstance(qty, int) and not isinstance(qty, bool) and total is not None:
            total += qty
        else:
            total = None
        weight = _measure(product.get("weight"), ("pounds", "pound", "lb", "lbs"))
        if weight is not None:
            out.weights_lb.append(weight)
        elif product.get("weight") is not None:
            out.other_units += 1
        sides = [_measure(product.get(k), ("in", "inches", "inch")) for k in ("height", "length", "width")]
        known = [s for s in sides if s is not None]
        if known:
            out.max_side_in.append(max(known))
        if any(s is None and product.get(k) is not None for s, k in zip(sides, ("height", "length", "width"),
                                                                         strict=True)):
            out.other_units += 1
    out.quantity_sum = total
    return out


def _measure(value: Any, units: tuple[str, ...]) -> float | None:
    if not isinstance(value, dict):
        return None
    number, unit = value.get("value"), str(value.get("unit", "")).strip().lower()
    if isinstance(number, int | float) and not isinstance(number, bool) and unit in units:
        return float(number)
    return None
