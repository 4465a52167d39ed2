"""A token added to a process's home file works there even while no broker answers."""

from __future__ import annotations

import asyncio
from pathlib import Path

from streams.follower import stopped
from streams.token_sync import TokenSync
from streams.tokens import Role, TokenFile, TokenStore, new_token

#: A port nothing listens on: the follower only ever retries.
UNREACHABLE = "127.0.0.1:1"


def test_a_token_added_to_the_home_file_works_while_the_broker_is_unreachable(tmp_path: Path) -> None:
    async def scenario() -> tuple[bool, bool]:
        store, file = TokenStore(), TokenFile(tmp_path)
        sync = TokenSync(store, file, UNREACHABLE)
        assert sync.follower is not None
        sync.follower.retry_s = 0.2
        stop = asyncio.Event()
        task = asyncio.create_task(sync.run(stop))
        await asyncio.sleep(0.5)  # started: the file read once, the follower failing to connect
        token, record = new_token("carol", Role.ANNOTATOR)
        before = store.authenticate(token) is not None
        file.append(record)
        for _ in range(40):  # the file is re-read every second
            if await stopped(stop, 0.1) or store.authenticate(token) is not None:
                break
        after = store.authenticate(token) is not None
        stop.set()
        await asyncio.wait_for(task, 10)
        return before, after

    before, after = asyncio.run(scenario())
    assert not before
    assert after, "a token appended to the home file was not honoured while Kafka was unreachable"
