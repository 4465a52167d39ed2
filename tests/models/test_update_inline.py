"""Whether a model update carries its weights inline is decided from their size, without encoding
them first (issue 9, freshness: the default model's 4.7 MB were base64-encoded on every swap's batch
only to be written to the store): the boundary is where it was."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import torch

from models.ctr.versions import base64_length, encode_update, load_update
from tests.models.synthetic import impressions, make_service


def test_base64_length_is_the_encoded_length() -> None:
    assert [base64_length(n) for n in range(64)] == [len(base64.b64encode(bytes(n))) for n in range(64)]


def test_weights_travel_inline_strictly_below_the_limit(tmp_path: Path) -> None:
    service, _ = make_service(tmp_path)
    service.process(service.subscriptions()[0].topic, list(impressions(256)))
    version = service.history.serving
    assert version is not None
    buffer = io.BytesIO()
    torch.save(version.scorer.state_dict(), buffer)
    encoded = len(base64.b64encode(buffer.getvalue()))
    store = tmp_path / "updates"

    below = encode_update("ctr", version, {}, store, inline_limit=encoded + 1)
    at = encode_update("ctr", version, {}, store, inline_limit=encoded)

    assert below.weights is not None and below.uri is None
    assert at.weights is None and at.uri is not None and Path(at.uri).is_file()
    inline, stored = load_update(below, tmp_path), load_update(at, tmp_path)
    assert below.sha256 == at.sha256
    assert all(torch.equal(inline["net"][k], stored["net"][k]) for k in inline["net"])
