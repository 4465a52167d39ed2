"""Keyed services: state sharded like the topics, so partitions (and their state) can move.

A key always lands on the partition the producer's partitioner gives it (murmur2, as Kafka's Java
client and kafka-python do), so the state of partition ``p`` holds exactly the keys of the events
on partition ``p`` of every co-partitioned input topic. The runner checkpoints each shard with the
offsets of its partitions, loads a shard when its partition is assigned to this worker and drops
it when the partition moves away. A key's owner is found with :func:`partition_for`.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from streams.schemas import Record
from streams.service import BatchResult, ModelService
from streams.topics import partition_for

__all__ = ["KeyedService", "partition_for"]


class KeyedService(ModelService):
    """A service whose whole state is a set of shards, one per owned partition number."""

    keyed = True

    def process(self, topic: str, records: list[Record]) -> BatchResult:
        raise TypeError(f"{self.name} is keyed: the runner calls process_shard per partition")

    @abstractmethod
    def process_shard(self, topic: str, partition: int, records: list[Record]) -> BatchResult:
        """Apply records of one partition (all keys in it belong to shard ``partition``)."""

    @abstractmethod
    def shards(self) -> set[int]:
        """Partition numbers whose shard this worker holds."""

    @abstractmethod
    def shard_state(self, partition: int) -> dict[str, Any]:
        """One shard's state, for its own checkpoint."""

    @abstractmethod
    def load_shard(self, partition: int, state: dict[str, Any] | None) -> None:
        """Hold shard ``partition`` from a checkpoint (None: it starts empty)."""

    @abstractmethod
    def drop_shard(self, partition: int) -> None:
        """Forget a shard whose partition moved to another worker."""

    def shard_from_state(self, state: dict[str, Any], partition: int) -> dict[str, Any] | None:
        """Shard ``partition`` cut from a whole-service state (a first-release checkpoint)."""
        raise NotImplementedError(f"{self.name} cannot read whole-service checkpoints")

    def state_dict(self) -> dict[str, Any]:
        return {"shards": {p: self.shard_state(p) for p in sorted(self.shards())}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for partition in self.shards() - set(state["shards"]):
            self.drop_shard(partition)
        for partition, shard in state["shards"].items():
            self.load_shard(int(partition), shard)
