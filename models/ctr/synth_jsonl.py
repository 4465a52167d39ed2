"""``impression/1`` JSON lines for synthetic batches, built as byte matrices in numpy.

Every line has the same keys in the same order; only ids, counts and digits vary. So the lines are
rows of one ``[rows, width]`` uint8 matrix: a template of the constant text, with each variable part
written into its fixed-width slot and 0 in the bytes a row does not use (leading zeros of a number,
a missing count's whole ``,"I3":…`` slot); dropping the zero bytes of the whole matrix at once
leaves the lines. Formatting rows one by one in Python costs
several microseconds a row, which misses the CLI's 100k rows/s target on this machine.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from models.ctr.synth import DENSE_FIELDS, CriteoSynth, SynthBatch
from streams.schemas import Impression, parse_record

#: Rows encoded at once: a ~760-byte matrix row per line keeps the matrix near 12 MB.
CHUNK = 16_384


def _words(texts: Sequence[bytes], dtype: type[np.unsignedinteger]) -> np.ndarray:
    """Each text as one little-endian word (first byte lowest), padded on the left with 0 bytes."""
    size = np.dtype(dtype).itemsize
    return np.frombuffer(b"".join(text.rjust(size, b"\0") for text in texts), dtype=dtype)


#: Four decimal digits of 0..9999 as one uint32: zero-padded, and with leading zeros blanked to 0.
_PADDED = _words([b"%04d" % i for i in range(10_000)], np.uint32)
_BLANKED = _words([b"%d" % i for i in range(10_000)], np.uint32)
#: Four hex digits of 0..65535 as one uint32.
_HEX = _words([b"%04x" % i for i in range(65_536)], np.uint32)


def _decimal(values: np.ndarray, groups: int) -> np.ndarray:
    """ASCII digits of non-negative integers below ``10 ** (4 * groups)``, right-aligned in
    ``[..., 4 * groups]`` bytes with leading zeros blanked to 0 (a value's last digit always stays)."""
    rest = values.astype(np.int64)
    quads = []
    for _ in range(groups):
        rest, low = np.divmod(rest, 10_000)
        quads.append(low)
    quads.reverse()  # most significant first
    words = np.zeros((*values.shape, groups), dtype=np.uint32)
    started = np.zeros(values.shape, dtype=bool)
    for g, quad in enumerate(quads):
        last = g == groups - 1
        words[..., g] = np.where(started, _PADDED[quad], np.where((quad > 0) | last, _BLANKED[quad], 0))
        started |= quad > 0
    return words.view(np.uint8)


@dataclass(frozen=True)
class _Layout:
    """A line's constant text with 0-filled slots, and where each slot starts."""

    template: np.ndarray  #: uint8 [width]
    at: dict[str, int]
    ids: np.dtype  #: a structured dtype over a whole line: field ``c<f>`` is the 8 hex digits of C<f+1>


@functools.cache
def _layout(id_prefix: str, fields: int, dense_fields: int) -> _Layout:
    template, at = bytearray(), {}

    def slot(name: str, width: int) -> None:
        at[name] = len(template)
        template.extend(bytes(width))

    template += b'{"schema":"impression/1","id":"' + id_prefix.encode()
    slot("row", 16)
    template += b'","ts":'
    slot("seconds", 12)
    template += b"."
    slot("millis", 3)
    template += b',"categorical":{'
    for field in range(fields):
        template += b'"C%d":"' % (field + 1)
        slot(f"c{field}", 8)
        template += b'",' if field < fields - 1 else b'"'
    template += b'},"dense":{'
    slot("dense", 16 * dense_fields)
    template += b'},"clicked":'
    slot("clicked", 1)
    template += b"}\n"
    names = [f"c{field}" for field in range(fields)]
    ids = np.dtype({"names": names, "formats": ["<u8"] * fields, "offsets": [at[n] for n in names],
                    "itemsize": len(template)})  # fmt: skip
    return _Layout(np.frombuffer(bytes(template), dtype=np.uint8), at, ids)


def _hex(ids: np.ndarray) -> np.ndarray:
    """The 8 hex digits of each uint32 id as one little-endian uint64 (most significant digit first)."""
    high = _HEX[ids >> np.uint32(16)].astype(np.uint64)
    low = _HEX[ids & np.uint32(0xFFFF)].astype(np.uint64)
    return high | (low << np.uint64(32))


def _dense(dense: np.ndarray) -> np.ndarray:
    """``"I1":3,"I3":17,…`` (missing counts left out) as ``[rows, 16 * fields]`` bytes: per field one
    word for the key with its comma and one for up to 8 digits; a missing count's words are 0."""
    rows, fields = dense.shape
    names = [name.encode() for name in DENSE_FIELDS[:fields]]
    present = (~np.isnan(dense)).T  # field-major: contiguous rows
    first = present & (np.cumsum(present, axis=0) == 1)  # the first count of a row takes no comma
    keys = np.where(
        first,
        _words([b'"%s":' % name for name in names], np.uint64)[:, None],
        _words([b',"%s":' % name for name in names], np.uint64)[:, None],
    )
    digits = _decimal(np.where(present, dense.T, 0), groups=2).view(np.uint64)[..., 0]
    slots = np.empty((rows, fields, 2), dtype=np.uint64)
    slots[:, :, 0] = np.where(present, keys, 0).T
    slots[:, :, 1] = np.where(present, digits, 0).T
    return slots.view(np.uint8).reshape(rows, -1)


def encode(batch: SynthBatch, timestamps: np.ndarray, id_prefix: str) -> bytes:
    """The rows of ``batch`` as ``impression/1`` JSON lines (``id`` = prefix + row, ``ts`` to the ms)."""
    rows, fields = batch.ids.shape
    layout = _layout(id_prefix, fields, batch.dense.shape[1])
    at = layout.at
    matrix = np.empty((rows, len(layout.template)), dtype=np.uint8)
    matrix[:] = layout.template
    matrix[:, at["row"] : at["row"] + 16] = _decimal(batch.rows, groups=4).reshape(rows, 16)
    seconds, millis = np.divmod(np.rint(timestamps * 1000).astype(np.int64), 1000)
    matrix[:, at["seconds"] : at["seconds"] + 12] = _decimal(seconds, groups=3).reshape(rows, 12)
    matrix[:, at["millis"] : at["millis"] + 3] = _PADDED[millis].view(np.uint8).reshape(rows, 4)[:, 1:]
    lines = matrix.view(layout.ids)[:, 0]
    hex_words = _hex(batch.ids)
    for field in range(fields):
        lines[f"c{field}"] = hex_words[:, field]
    dense = _dense(batch.dense)
    matrix[:, at["dense"] : at["dense"] + dense.shape[1]] = dense
    matrix[:, at["clicked"]] = batch.clicked + ord("0")
    return matrix[matrix != 0].tobytes()


def json_chunks(synth: CriteoSynth, start: int, stop: int) -> Iterator[tuple[int, bytes]]:
    """Rows ``[start, stop)`` of the stream as (row count, JSON lines) chunks of at most :data:`CHUNK`."""
    prefix = f"s{synth.config.seed}-"
    for batch in synth.batches(start, stop):
        for first in range(0, len(batch), CHUNK):
            part = batch.slice(first, first + CHUNK)
            yield len(part), encode(part, synth.timestamps(part.rows), prefix)


def write(handle: BinaryIO, synth: CriteoSynth, start: int, stop: int, progress: bool = False) -> int:
    """Write rows ``[start, stop)`` to ``handle`` as JSON lines; returns the rows written."""
    from tqdm import tqdm

    written = 0
    with tqdm(total=stop - start, unit="row", unit_scale=True, disable=not progress, desc="synth") as bar:
        for rows, lines in json_chunks(synth, start, stop):
            handle.write(lines)
            written += rows
            bar.update(rows)
    return written


def impressions(synth: CriteoSynth, start: int, stop: int) -> Iterator[Impression]:
    """Rows ``[start, stop)`` as validated :class:`Impression` records (for producing to Kafka)."""
    for _, lines in json_chunks(synth, start, stop):
        for line in lines.splitlines():
            record = parse_record(line, Impression)
            assert isinstance(record, Impression)
            yield record
