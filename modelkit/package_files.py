"""Files shipped inside installed packages (data, binaries), located without importing those packages."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def installed(package: str) -> bool:
    """Whether ``package`` is installed (found by the import system; not imported)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return False
    return spec is not None and bool(spec.submodule_search_locations)


def package_file(package: str, *parts: str) -> Path | None:
    """``package/<parts...>`` inside the installed package, or None when the package or the file is absent."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(location).joinpath(*parts)
        if candidate.is_file():
            return candidate
    return None
