"""The model families an artifact may name in its manifest (``model_family``), by name."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from modelkit import gru4rec, sasrec, vsknn
from modelkit.blend import blend_family
from modelkit.family import Family

SINGLE_FAMILIES: Mapping[str, Family] = MappingProxyType(
    {family.name: family for family in (gru4rec.FAMILY, sasrec.FAMILY, vsknn.FAMILY)})
FAMILIES: Mapping[str, Family] = MappingProxyType({**SINGLE_FAMILIES, "blend": blend_family(SINGLE_FAMILIES)})


def family_named(name: str) -> Family:
    """The family called ``name``; ValueError names the known ones."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r} (known: {', '.join(sorted(FAMILIES))})")
    return FAMILIES[name]
