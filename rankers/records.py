"""Between stream records and ranking batches: Query records in and out of a :class:`QueryBatch`."""

from __future__ import annotations

import numpy as np

from rankers.data import QueryBatch
from streams.schemas import Document, Query


def query_batch(queries: list[Query], grades: list[dict[str, int]] | None = None) -> QueryBatch:
    """Records to a batch; with ``grades``, each query's documents graded in document order."""
    return QueryBatch.from_queries(
        [q.query_id for q in queries],
        [np.array([d.features for d in q.documents], dtype=np.float32) for q in queries],
        None
        if grades is None
        else [[g[d.doc_id] for d in q.documents] for q, g in zip(queries, grades, strict=True)],
    )


def query_records(batch: QueryBatch, ts0: float = 0.0) -> tuple[list[Query], dict[str, dict[str, int]]]:
    """Query records of a batch (doc ids ``<query>-d<j>``, ts ``ts0 + i``) and, when it is labeled,
    each query's true grades by doc id (what a truthful annotator would submit)."""
    records: list[Query] = []
    truth: dict[str, dict[str, int]] = {}
    for i, (a, b) in enumerate(zip(batch.offsets[:-1], batch.offsets[1:], strict=True)):
        qid = batch.query_ids[i]
        rows = batch.features[a:b]
        docs = [Document(doc_id=f"{qid}-d{j}", features=row.tolist()) for j, row in enumerate(rows)]
        records.append(Query(query_id=qid, ts=ts0 + i, documents=docs))
        if batch.grades is not None:
            truth[qid] = {d.doc_id: int(g) for d, g in zip(docs, batch.grades[a:b], strict=True)}
    return records, truth
