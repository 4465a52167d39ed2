"""A bad ``DRIFTLINE_DRIFT_*`` value stops ``driftline worker`` with one clear line, not a traceback."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.kafka


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("DRIFTLINE_DRIFT_DELTA", "lots", "DRIFTLINE_DRIFT_DELTA='lots'"),
        ("DRIFTLINE_DRIFT_ACTION", "ctr=explode", "drift action must be one of"),
    ],
)
def test_a_bad_drift_setting_is_one_line_and_exit_code_2(
    kafka, worker_factory, variable: str, value: str, says: str
) -> None:
    worker = worker_factory("ctr", env={variable: value}).start(wait=False)
    assert worker.process is not None
    assert worker.process.wait(timeout=120) == 2
    output = (worker.home / "worker.log").read_text()
    errors = [line for line in output.splitlines() if line.startswith("driftline: error:")]
    assert len(errors) == 1 and says in errors[0], output[-2000:]
    assert "Traceback" not in output, output[-2000:]
