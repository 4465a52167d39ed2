"""``impression/1`` JSON lines for synthetic batches, built as byte matrices in numpy.

Every line has the same keys in the same order; only ids, counts and digits vary. So each part of a
line is a fixed-width block of columns of one ``[rows, width]`` uint8 matrix, with 0 in the bytes a
row does not use (leading zeros of a number, a missing count's whole ``,"I3":…`` slot); dropping the
zero bytes of the whole matrix at once leaves the lines. Formatting rows one by one in Python costs
several microseconds a row, which misses the CLI's 100k rows/s target on this machine.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import BinaryIO

import numpy as np

from models.ctr.synth import DENSE_FIELDS, CriteoSynth, SynthBatch
from streams.schemas import Impression, parse_record

#: Rows encoded at once: a ~900-byte matrix row per line keeps the matrix near 15 MB.
CHUNK = 16_384


def _words(texts: Sequence[bytes], dtype: type[np.unsignedinteger]) -> np.ndarray:
    """Each text as one little-endian word (first byte lowest), padded on the left with 0 bytes."""
    size = np.dtype(dtype).itemsize
    return np.frombuffer(b"".join(text.rjust(size, b"\0") for text in texts), dtype=dtype)


#: Four decimal digits of 0..9999 as one uint32: zero-padded, and with leading zeros blanked to 0.
_PADDED = _words([b"%04d" % i for i in range(10_000)], np.uint32)
_BLANKED = _words([b"%d" % i for i in range(10_000)], np.uint32)
#: Two hex digits of a byte as one uint16.
_HEX = _words([b"%02x" % i for i in range(256)], np.uint16)


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


def _constant(text: bytes, rows: int) -> np.ndarray:
    return np.broadcast_to(np.frombuffer(text, dtype=np.uint8), (rows, len(text)))


def _categorical(ids: np.ndarray) -> np.ndarray:
    """``"C1":"68fd1e64","C2":…`` as ``[rows, width]`` bytes with no padding (every key and id has a
    fixed length): a template row, with each field's 8 hex digits written in as one unaligned word."""
    rows, fields = ids.shape
    template, offsets = b"", []
    for field in range(fields):
        template += b'"C%d":"' % (field + 1)
        offsets.append(len(template))
        template += b"00000000" + (b'",' if field < fields - 1 else b'"')
    slots = np.dtype({"names": [f"c{f}" for f in range(fields)], "formats": ["<u8"] * fields,
                      "offsets": offsets, "itemsize": len(template)})  # fmt: skip
    big_endian = np.ascontiguousarray(ids, dtype=">u4").view(np.uint8).reshape(rows, fields, 4)
    hex_words = _HEX[big_endian].view("<u8")[:, :, 0]
    block = np.empty((rows, len(template)), dtype=np.uint8)
    block[:] = np.frombuffer(template, dtype=np.uint8)
    row_view = block.view(slots)[:, 0]
    for field in range(fields):
        row_view[f"c{field}"] = hex_words[:, field]
    return block


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
    rows = len(batch)
    millis = np.rint(timestamps * 1000).astype(np.int64)
    seconds, fraction = np.divmod(millis, 1000)
    parts = [
        _constant(b'{"schema":"impression/1","id":"' + id_prefix.encode(), rows),
        _decimal(batch.rows, groups=4),
        _constant(b'","ts":', rows),
        _decimal(seconds, groups=3),
        _constant(b".", rows),
        _PADDED[fraction].view(np.uint8).reshape(rows, 4)[:, 1:],
        _constant(b',"categorical":{', rows),
        _categorical(batch.ids),
        _constant(b'},"dense":{', rows),
        _dense(batch.dense),
        _constant(b'},"clicked":', rows),
        (batch.clicked.astype(np.uint8) + ord("0"))[:, None],
        _constant(b"}\n", rows),
    ]
    matrix = np.concatenate(parts, axis=1)
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
