"""API tokens: who may call which HTTP route, stored hashed, the same in every process.

A token is a random secret shown once (``driftline tokens add``); only its sha256 is kept, in a
:class:`TokenRecord` keyed by the token's name. Records live in two places that a :class:`TokenStore`
merges, the newest record of a name winning (a revocation is a record too, so it can win):

- ``<home>/tokens.jsonl``, appended to by the CLI: works before any broker or worker runs, and a
  worker on that home reads it within a second;
- the compacted ``tokens`` topic, which every worker and serving replica follows
  (:mod:`streams.token_sync`), so workers with their own homes accept the same tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError

from streams.schemas import Record

TOKEN_PREFIX = "dl_"
TOKENS_FILE = "tokens.jsonl"
NAME_PATTERN = r"^[A-Za-z0-9_.@-]{1,200}$"


class Role(IntEnum):
    """Ranked: a higher role may do everything a lower one may."""

    READER = 1
    ANNOTATOR = 2
    ADMIN = 3

    @classmethod
    def parse(cls, name: str) -> Role:
        try:
            return cls[name.upper()]
        except KeyError:
            known = ", ".join(r.label for r in cls)
            raise ValueError(f"unknown role {name!r}; known: {known}") from None

    @property
    def label(self) -> str:
        return self.name.lower()


class TokenRecord(Record):
    """One token's hash and role, or its revocation (``revoked``), as of ``ts``."""

    schema_: Literal["token/1"] = Field("token/1", alias="schema")
    name: str = Field(pattern=NAME_PATTERN)
    role: Literal["reader", "annotator", "admin"] = "reader"
    sha256: str = Field(default="", pattern=r"^([0-9a-f]{64})?$")
    ts: float
    revoked: bool = False


@dataclass(frozen=True)
class Principal:
    """Who a request authenticated as."""

    name: str
    role: Role


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(name: str, role: Role) -> tuple[str, TokenRecord]:
    """A fresh secret and the record that stores its hash (the secret itself is never stored)."""
    if not re.match(NAME_PATTERN, name):
        raise ValueError(f"bad token name {name!r}: use 1 to 200 letters, digits and _ . @ -")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    record = TokenRecord(name=name, role=role.label, sha256=hash_token(token), ts=time.time())
    return token, record


def revocation(name: str) -> TokenRecord:
    return TokenRecord(name=name, ts=time.time(), revoked=True)


def parse_token_record(raw: bytes | str) -> TokenRecord | None:
    """A record from the file or the topic, or None for a line that is not one (never raises)."""
    try:
        return TokenRecord.model_validate_json(raw)
    except (ValidationError, ValueError):
        return None


class TokenStore:
    """The live tokens by name, newest record winning; safe to use from several threads."""

    def __init__(self, records: list[TokenRecord] = ()) -> None:
        self._lock = threading.Lock()
        self._by_name: dict[str, TokenRecord] = {}
        self._by_hash: dict[str, TokenRecord] = {}
        for record in records:
            self.apply(record)

    def apply(self, record: TokenRecord) -> bool:
        """Take ``record`` unless the store holds a newer one for its name; True if it changed."""
        with self._lock:
            held = self._by_name.get(record.name)
            if held is not None and held.ts >= record.ts:
                return False
            if held is not None:
                self._by_hash.pop(held.sha256, None)
            self._by_name[record.name] = record
            if not record.revoked:
                self._by_hash[record.sha256] = record
            return True

    def newest(self, name: str) -> TokenRecord | None:
        """The newest record for ``name``, revocations included."""
        with self._lock:
            return self._by_name.get(name)

    def records(self) -> list[TokenRecord]:
        with self._lock:
            return sorted(self._by_name.values(), key=lambda r: r.name)

    def active(self) -> list[TokenRecord]:
        return [r for r in self.records() if not r.revoked]

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_hash)

    def authenticate(self, token: str) -> Principal | None:
        """The principal ``token`` belongs to, or None (unknown, revoked, or malformed)."""
        digest = hash_token(token)
        with self._lock:
            record = self._by_hash.get(digest)
        if record is None or not hmac.compare_digest(record.sha256, digest):
            return None
        return Principal(record.name, Role.parse(record.role))


class TokenFile:
    """``<home>/tokens.jsonl``: an append-only log of token records, re-read when it changes."""

    def __init__(self, home: Path) -> None:
        self.path = Path(home) / TOKENS_FILE
        self._seen: tuple[float, int] | None = None

    def append(self, record: TokenRecord) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(record.model_dump_json(by_alias=True) + "\n")
        self.path.chmod(0o600)

    def read(self) -> list[TokenRecord]:
        """Every valid record in the file (a torn or foreign line is skipped)."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        return [r for r in map(parse_token_record, lines) if r is not None]

    def changed(self) -> bool:
        """True when the file's size or mtime moved since the last call (first call: if it exists)."""
        try:
            stat = self.path.stat()
            seen = (stat.st_mtime, stat.st_size)
        except FileNotFoundError:
            seen = None
        if seen == self._seen:
            return False
        self._seen = seen
        return seen is not None


def token_from_header(value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None when absent or malformed."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 512:
        return None
    return token
