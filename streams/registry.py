"""Which services a worker can run, by name, imported only when asked for."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from streams.service import ModelService

#: service name -> "module:factory"; a factory takes (data_dir, **options) and returns a service.
SERVICES: dict[str, str] = {
    "tally": "streams.tally:build_service",
    "forecast": "forecasters.service:build_service",
    "ctr": "models.ctr.service:build_service",
    "rank": "rankers.service:build_service",
}


def parse_names(spec: str) -> list[str]:
    """``"forecast, ctr"`` -> ``["forecast", "ctr"]``, rejecting unknown names clearly."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in SERVICES]
    if unknown:
        raise ValueError(f"unknown service(s) {', '.join(unknown)}; known: {', '.join(SERVICES)}")
    if not names:
        raise ValueError("no service named; known: " + ", ".join(SERVICES))
    return names


def build(name: str, data_dir: Path, **options: Any) -> ModelService:
    """Import and construct the service ``name``."""
    module_name, factory = SERVICES[name].split(":")
    module = importlib.import_module(module_name)
    return getattr(module, factory)(data_dir, **options)
