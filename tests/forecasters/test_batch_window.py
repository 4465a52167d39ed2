"""The forecast service's micro-batch window: none by default, settable, refused when nonsense."""

from __future__ import annotations

from pathlib import Path

import pytest

from forecasters.service import ForecastService, build_service
from forecasters.zoo import ForecasterSpec
from streams.service import Subscription
from streams.topics import topic_name

SPEC = dict(kind="dlinear", seq_len=8, horizon=3, channels=2)


def observations(service: ForecastService) -> Subscription:
    """The service's subscription to observations (it also follows ``control`` for outcomes)."""
    (subscription,) = [s for s in service.subscriptions() if s.topic == topic_name("observations")]
    return subscription


def test_by_default_a_batch_waits_for_no_window_so_its_size_follows_the_load() -> None:
    subscription = observations(ForecastService(ForecasterSpec(**SPEC)))
    assert subscription.batch_window_s == 0.0


def test_the_window_is_an_option_of_the_service(tmp_path: Path) -> None:
    subscription = observations(build_service(tmp_path, batch_window_s=0.2, batch_size=64, **SPEC))
    assert (subscription.batch_window_s, subscription.batch_size) == (0.2, 64)


@pytest.mark.parametrize("bad", [-0.1, "0.5", True, None])
def test_a_bad_window_is_refused_with_a_clear_error(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ValueError, match="batch_window_s must be a number of seconds >= 0"):
        build_service(tmp_path, batch_window_s=bad, **SPEC)


def test_every_subscription_takes_the_batch_size_so_it_caps_a_batch(tmp_path: Path) -> None:
    """The consumer batches by the largest size among a service's subscriptions: control's must not
    keep its default of 256 when ``forecast.batch_size`` asks for less."""
    service = build_service(tmp_path, batch_size=64, **SPEC)
    assert {s.batch_size for s in service.subscriptions()} == {64}
