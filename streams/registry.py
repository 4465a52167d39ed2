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


#: service name -> "module:factory" of its serving part for replicas; a factory takes
#: (checkpoint_root, **options) and returns a part (:class:`roles.serving.ServingPart`): the topic
#: it follows, routes, ready, model_version, apply and caught_up.
SERVING: dict[str, str] = {
    "ctr": "models.ctr.serving:build_serving",
    "forecast": "forecasters.serving:build_serving",
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
    return _call(SERVICES[name], data_dir, **options)


def build_serving(name: str, checkpoint_root: Path, **options: Any) -> Any:
    """Import and construct the serving part of ``name`` (for a replica)."""
    if name not in SERVING:
        raise ValueError(f"service {name!r} has no serving part; replicas serve: {', '.join(SERVING)}")
    return _call(SERVING[name], checkpoint_root, **options)


def _call(target: str, path: Path, **options: Any) -> Any:
    module_name, factory = target.split(":")
    return getattr(importlib.import_module(module_name), factory)(path, **options)
