"""Stand-in for the worker's producer: keep what a service emits instead of sending it to Kafka."""

from __future__ import annotations

from streams.service import ModelService, Output


def record_outputs(service: ModelService) -> list[Output]:
    """Attach an ``emit`` to ``service`` that appends each output to the returned list."""
    sent: list[Output] = []

    async def emit(output: Output) -> None:
        sent.append(output)

    service.emit = emit
    return sent
