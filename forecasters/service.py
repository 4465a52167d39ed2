"""The forecasting service: learns from every observation on the stream and serves the latest forecasts.

Each micro-batch is first appended to the per-series rolling windows in arrival order. Every time a
series' window holds ``seq_len + horizon`` rows, a copy of it is kept as one training pair (look-back,
the ``horizon`` rows that just completed). The update cadence then adapts to load:

- caught up (at most one new observation per series): each series has at most one pair, and the pairs
  of all series go through one test-then-train ``learn`` call, i.e. one update per observation;
- behind (several observations of a series): a series' consecutive pairs are cut into chunks of at most
  ``max_train_batch``, and round j trains the j-th chunk of every series in one ``learn`` call. Within
  a call every pair is scored by the pre-update model, then the model steps once, so each pair is
  scored before any update has used it and a series' chunks are learnt in order.

After training, all touched series with a full look-back are forecast in one batch; the forecasts go
to the forecasts topic and into the table that ``GET /forecast/{series}`` reads. They come from the
version that serves, which the promotion gate (:mod:`forecasters.promotion`) replaces only by a frozen
copy of the learner that did no worse on held-back windows, and which probation rolls back when it does
worse than its predecessor; before any version serves, from the learner. An admin may serve a kept
version by hand (``POST /models/forecast/promote|rollback``): an outcome on the control topic, durable
before the answer and applied once (:mod:`forecasters.by_hand`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from forecasters.batch import WindowBatch, calendar_marks
from forecasters.by_hand import ServeByHand, VersionStore
from forecasters.data import Scaler
from forecasters.learner import Forecaster
from forecasters.pretrained import load_pretrained
from forecasters.promotion import ForecastGate, PromotionConfig
from forecasters.routes import ForecastRoutes
from forecasters.windows import Extended, RowStore, SeriesWindows
from forecasters.zoo import ForecasterSpec, build_forecaster
from streams.config import Settings
from streams.expiry import check_ttl, silent_keys
from streams.lifecycle_routes import SERVE, NotKept
from streams.schemas import Forecast, Observation, Outcome, Record, parse_record
from streams.service import (
    ApiError,
    BatchResult,
    ModelService,
    Output,
    Route,
    Subscription,
)
from streams.topics import topic_name

log = logging.getLogger(__name__)

CALENDAR_FEATURES = 4
#: Default cap on one series' pairs per update when the worker is behind: on ETTh2 (bench/forecast_cadence.py)
#: the smallest cap that kept one series well above 400 obs/s on the loaded 2-core machine (see docs).
MAX_TRAIN_BATCH = 32
#: Default seconds a micro-batch waits for more records after its first: none. A batch is what
#: arrived while the previous one trained, so its size follows the load by itself (one observation
#: per batch when idle, up to ``batch_size`` when behind) and no event waits for a window to close.
#: With the 0.5 s default of other services, lag at 200 obs/s was rate x (window + 2 x batch time).
BATCH_WINDOW_S = 0.0


@dataclass(frozen=True)
class Round:
    """The pairs of one ``learn`` call: their series and the :class:`RowStore` rows their windows start at."""

    keys: tuple[str, ...]
    starts: np.ndarray


@dataclass(slots=True)
class LatestForecast:
    """The newest forecast of one series: [horizon, channels] values, per-variable branch weights and
    the model version that made it."""

    ts: float
    values: np.ndarray
    weights: dict[str, list[float]]
    version: int


class ForecastService(ModelService):
    """Online forecaster over the observations topic; see the module docstring for the flow."""

    name = "forecast"

    def __init__(
        self,
        spec: ForecasterSpec,
        learner: Forecaster | None = None,
        scaler: Scaler | None = None,
        version: int = 0,
        batch_size: int = 512,
        max_train_batch: int = MAX_TRAIN_BATCH,
        series_ttl_s: float | None = None,
        batch_window_s: float = BATCH_WINDOW_S,
        promotion: PromotionConfig | None = None,
        checkpoint_root: Path | None = None,
    ) -> None:
        super().__init__()
        if spec.marks not in (0, CALENDAR_FEATURES):
            raise ValueError(
                f"the service derives {CALENDAR_FEATURES} calendar features from ts, or none; "
                f"spec asks for {spec.marks}"
            )
        if isinstance(max_train_batch, bool) or not isinstance(max_train_batch, int) or max_train_batch < 1:
            raise ValueError(f"max_train_batch must be an integer >= 1, got {max_train_batch!r}")
        window_ok = isinstance(batch_window_s, int | float) and not isinstance(batch_window_s, bool)
        if not window_ok or batch_window_s < 0:
            raise ValueError(f"batch_window_s must be a number of seconds >= 0, got {batch_window_s!r}")
        self.spec = spec
        self.learner = learner or build_forecaster(spec)
        self.scaler = scaler or Scaler(
            np.zeros(spec.channels, np.float32), np.ones(spec.channels, np.float32)
        )
        #: The learner's starting version (pretrained, or 0); candidates are numbered on from it.
        self.version = version
        self.gate = ForecastGate(version, promotion)
        self.batch_size = batch_size
        self.max_train_batch = max_train_batch
        self.batch_window_s = float(batch_window_s)
        self.windows = SeriesWindows(spec.seq_len + spec.horizon)
        #: A series silent this long (event time) loses its window and forecast; None keeps all.
        self.series_ttl_s = check_ttl(series_ttl_s)
        self.table: dict[str, LatestForecast] = {}
        self.updates = 0
        #: Where versions served by hand are written before their outcome goes out (the
        #: deployment's checkpoint store, which every worker that may replay the decision reaches).
        self.versions = VersionStore(checkpoint_root or Settings.from_env().checkpoint_root)
        #: Outcomes replayed before training reached their decision point, by seq.
        self.pending: dict[int, Outcome] = {}

    def subscriptions(self) -> list[Subscription]:
        return [
            Subscription(topic_name("observations"), Observation, self.batch_size, self.batch_window_s),
            # The consumer batches by the largest size of a service's subscriptions: the same as
            # observations', so forecast.batch_size caps a batch.
            Subscription(topic_name("control"), Outcome, self.batch_size, self.batch_window_s),
        ]

    def model_version(self) -> int:
        """The serving version (the learner's starting one until a candidate passes the gate)."""
        return self.gate.version(self.version)

    # -- stream ----------------------------------------------------------------------------------
    def _reject_reason(self, obs: Observation, last_ts: float | None) -> str | None:
        """Why ``obs`` cannot be used (``last_ts``: its series' newest accepted time, in the window or
        earlier in this batch), or None. Every accepted row has the forecaster's channel count, so a
        series that has rows is told its own width changed."""
        width = len(obs.values)
        if width != self.spec.channels and last_ts is not None:
            return f"series {obs.series!r} has {self.spec.channels} channels, this observation has {width}"
        if width != self.spec.channels:
            return (
                f"this forecaster ({self.spec.kind}) serves {self.spec.channels}-channel series, got {width}"
            )
        if last_ts is not None and obs.ts <= last_ts:
            return f"ts {obs.ts} is not after the series' last observation at {last_ts}"
        return None

    def _marks(self, times: np.ndarray) -> torch.Tensor | None:
        return torch.from_numpy(calendar_marks(times)) if self.spec.marks else None

    def _batch(
        self, keys: tuple[str, ...], values: np.ndarray, times: np.ndarray, training: bool
    ) -> WindowBatch:
        """Training pairs ([B, seq_len + horizon] rows: first ``seq_len`` -> the rest) or look-backs."""
        seq_len = self.spec.seq_len
        if training:
            return WindowBatch(
                torch.from_numpy(values[:, :seq_len]),
                torch.from_numpy(values[:, seq_len:]),
                self._marks(times[:, :seq_len]),
                keys,
                sequential=True,  # a series' pairs are its consecutive steps: mixing advances per pair
            )
        return WindowBatch(torch.from_numpy(values), None, self._marks(times), keys)

    def _append(self, records: list[Record], rejected: dict[int, str]) -> dict[str, Extended]:
        """Append every usable observation, each series' rows in one copy; return the touched series'
        rows (window before the batch, then the batch's), in order of first appearance."""
        accepted: dict[str, list[int]] = {}
        last_ts: dict[str, float | None] = {}
        for index, obs in enumerate(records):
            if not isinstance(obs, Observation):
                rejected[index] = f"expected an observation, got {type(obs).__name__}"
                continue
            if obs.series not in last_ts:
                window = self.windows.get(obs.series)
                last_ts[obs.series] = None if window is None else window.last_ts
            reason = self._reject_reason(obs, last_ts[obs.series])
            if reason:
                rejected[index] = reason
                continue
            accepted.setdefault(obs.series, []).append(index)
            last_ts[obs.series] = obs.ts
        rows = [records[i] for indices in accepted.values() for i in indices]  # grouped by series
        if not rows:
            return {}
        values = self.scaler.transform(np.array([obs.values for obs in rows], np.float32))  # type: ignore[attr-defined]
        times = np.array([obs.ts for obs in rows], np.float64)  # type: ignore[attr-defined]
        extended, start = {}, 0
        for series, indices in accepted.items():
            stop = start + len(indices)
            extended[series] = self.windows.extend(series, times[start:stop], values[start:stop])
            start = stop
        return extended

    def _rounds(self, store: RowStore, extended: dict[str, Extended]) -> list[Round]:
        """Round j holds the j-th chunk (at most ``max_train_batch`` consecutive pairs) of every series."""
        cap = self.max_train_batch
        keys: list[list[str]] = []
        starts: list[list[np.ndarray]] = []
        for series, rows in extended.items():
            pairs = store.spans[series][0] + rows.full_starts
            for j, first in enumerate(range(0, len(pairs), cap)):
                if j == len(keys):
                    keys.append([])
                    starts.append([])
                chunk = pairs[first : first + cap]
                keys[j] += [series] * len(chunk)
                starts[j].append(chunk)
        return [Round(tuple(k), np.concatenate(s)) for k, s in zip(keys, starts, strict=True)]

    def _train(self, store: RowStore, rounds: list[Round]) -> dict[str, float]:
        """One test-then-train ``learn`` per round; progressive metrics averaged over every pair."""
        totals: dict[str, float] = {}
        trained = 0
        rolled_back = self.gate.before_batch(self.learner)
        batches = [
            self._batch(r.keys, *store.windows(r.starts, self.windows.capacity), training=True)
            for r in rounds
        ]
        self.gate.score(batches)  # held-back slice and probation, before the learner trains on any
        for batch in batches:
            metrics = self.learner.learn(batch)
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value * len(batch.x)
            trained += len(batch.x)
        self.updates += len(rounds)
        averages = {key: total / trained for key, total in totals.items()} if trained else {}
        decision = self.gate.after_batch(trained, self.batch_offsets)
        steps = {"trained_windows": float(trained), "train_steps": float(len(rounds))}
        return {**averages, **steps, **rolled_back, **decision}

    def process(self, topic: str, records: list[Record]) -> BatchResult:
        with self.lock:
            if topic == topic_name("control"):
                return BatchResult(rejected=self.apply_control(records)[1])  # its own: no-ops
            rejected: dict[int, str] = {}
            extended = self._append(records, rejected)
            store = RowStore(extended)
            metrics = self._train(store, self._rounds(store, extended))
            self._apply_due()
            ready = [s for s, rows in extended.items() if rows.count >= self.spec.seq_len]
            outputs = self._forecast(store, ready)
            metrics["forecasts"] = float(len(outputs))
            self._expire()
            return BatchResult(outputs, metrics, rejected)

    def _expire(self) -> None:
        last_seen = self.windows.last_seen()
        for series in silent_keys(last_seen, max(last_seen.values(), default=0.0), self.series_ttl_s):
            self.windows.drop(series)
            self.table.pop(series, None)

    def _forecast(self, store: RowStore, ready: list[str]) -> list[Output]:
        """Forecast the ``ready`` series (a full look-back) from their newest rows, in one batch."""
        if not ready:
            return []
        ends = np.array([store.spans[series][1] for series in ready])
        lookbacks, times = store.windows(ends - self.spec.seq_len, self.spec.seq_len)
        batch = self._batch(tuple(ready), lookbacks, times, training=False)
        serving, version = self.gate.forecaster(self.learner), self.model_version()
        scaled = serving.predict(batch).cpu().numpy()
        values = scaled * self.scaler.std + self.scaler.mean
        weights = serving.mixing_weights(batch)
        outputs = []
        forecasts_topic = topic_name("forecasts")
        for row, series in enumerate(ready):
            row_weights = {name: rows[row] for name, rows in weights.items()}
            entry = LatestForecast(
                float(times[row, -1]), values[row].astype(np.float32), row_weights, version
            )
            self.table[series] = entry
            outputs.append(Output(forecasts_topic, series, self._record(series, entry, self.spec.horizon)))
        return outputs

    def _record(self, series: str, entry: LatestForecast, horizon: int) -> Forecast:
        """The record of ``entry``. Its fields are built here with the schema's types, so only the
        finiteness of the numbers needs checking, by their sums (a NaN or infinity anywhere makes a
        sum non-finite; an overflowing sum only costs the full check). Pydantic's validation (3x the
        cost of the rest, most of a 1,000-series batch's Python) runs only then, and refuses a
        non-finite forecast with the schema's reason."""
        values = entry.values[:horizon]
        finite = math.isfinite(values.sum()) and all(map(math.isfinite, map(sum, entry.weights.values())))
        build = Forecast.model_construct if finite else Forecast
        return build(
            series=series,
            ts=entry.ts,
            horizon=horizon,
            values=values.tolist(),
            model=self.spec.kind,
            model_version=entry.version,
            weights=entry.weights,
        )

    # -- HTTP ------------------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        return ForecastRoutes(self.spec.horizon, self.latest_forecast).routes()

    def latest_forecast(self, series: str) -> Forecast:
        """The series' latest forecast over the whole horizon (read lock-free, see ForecastRoutes)."""
        self.require_owner(series)  # a standby proxies to the trainer that owns the stream
        entry = self.table.get(series)
        if entry is None:
            window = self.windows.get(series)
            if window is None:
                raise ApiError(404, f"unknown series {series!r}: no observation of it has arrived")
            raise ApiError(
                404,
                f"series {series!r} has {window.count} of the {self.spec.seq_len} "
                "observations a forecast needs",
            )
        return self._record(series, entry, self.spec.horizon)

    # -- lifecycle: lineage (GET /models), drift alarms, versions served by hand -----------------
    def lineage_body(self) -> dict[str, Any]:
        """Every gated candidate with its decision and evidence, rollbacks and versions served by
        hand (called holding the lock)."""
        return self.gate.lineage.body()

    def on_drift(self, action: str) -> None:
        """A drift alarm (:class:`streams.drift.Adapts`), any action: the running probation is held
        while the predecessor does worse too (:meth:`ForecastGate.hear_alarm`); nothing else adapts."""
        self.gate.hear_alarm()

    async def serve_version(self, action: str, number: int | None) -> dict[str, Any]:
        """``POST /models/forecast/{promote,rollback}``: serve a kept version by hand; answered once
        the control topic has the decision (409 for a version that is not kept, or none to serve)."""
        outcome = await self.run_locked(self._decide_serve, action, number)
        await self.publish_outcome(outcome)
        return {"serving": outcome.data["version"], "was": outcome.data["was"], "action": action}

    def _decide_serve(self, action: str, number: int | None) -> Outcome:
        """The outcome serving ``number`` (default: the version before the serving one, or for
        ``promoted`` the newest kept), applied here at once; its weights are stored first."""
        try:
            target = self.gate.target(action, number)
        except NotKept as exc:
            raise ApiError(409, str(exc)) from None
        observations = topic_name("observations")
        trained = {
            tp: offset
            for tp, offset in self.gate.learned_offsets.items()
            if tp.rsplit(":", 1)[0] == observations
        }
        was = None if self.gate.serving is None else self.gate.serving.version
        stored = self.versions.save(target)
        serve = ServeByHand(target.version, target.trained_at, was, trained, stored, action)
        return self.new_outcome(SERVE, key=self.name, data=serve.data(), ts=time.time())

    def apply_outcome(self, outcome: Outcome) -> None:
        """Serve the version an outcome names and train on from it (idempotent); on a replay that
        reaches it before the observations learned before the decision, it waits in the state."""
        if outcome.kind != SERVE:
            super().apply_outcome(outcome)  # refuses kinds this service does not take
        serve = ServeByHand.of(outcome)
        if self._learned(serve.trained):
            self._serve(serve)
        else:
            self.pending = {**self.pending, outcome.seq: outcome}

    def _learned(self, offsets: dict[str, int]) -> bool:
        learned = self.gate.learned_offsets
        return all(learned.get(tp, -1) >= offset for tp, offset in offsets.items())

    def _serve(self, serve: ServeByHand) -> None:
        kept = self.gate.find(serve.version)
        if kept is None or kept.trained_at != serve.trained_at:  # a replay froze another namesake
            kept = self.versions.load(serve, self.learner)
        self.gate.serve_by_hand(kept, serve.action, self.learner)

    def _apply_due(self) -> None:
        """Apply waiting outcomes once training has learned what they were decided after."""
        for seq, outcome in sorted(self.pending.items()):
            serve = ServeByHand.of(outcome)
            if not self._learned(serve.trained):
                continue
            del self.pending[seq]
            try:
                self._serve(serve)
            except ApiError as exc:  # its weights are gone: nothing to serve, training goes on
                log.error("forecast: outcome %d cannot be applied: %s", seq, exc.message)

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        with self.lock:
            return {
                "spec": asdict(self.spec),
                "version": self.version,
                "updates": self.updates,
                "scaler": (self.scaler.mean, self.scaler.std),
                "learner": self.learner.state_dict(),
                "windows": self.windows.state_dict(),
                "table": {s: (e.ts, e.values, e.weights, e.version) for s, e in self.table.items()},
                "gate": self.gate.state_dict(),
                "pending": [o.model_dump(mode="json", by_alias=True) for o in self.pending.values()],
            }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = ForecasterSpec.from_dict(state["spec"])
        if saved != self.spec:
            raise ValueError(f"checkpoint is for {saved}, this service runs {self.spec}")
        with self.lock:
            self.version = int(state["version"])
            self.updates = int(state["updates"])
            self.scaler = Scaler(*state["scaler"])
            self.learner.load_state_dict(state["learner"])
            self.windows.load_state_dict(state["windows"])
            self.table = {s: _table_entry(e, self.version) for s, e in state["table"].items()}
            self.gate = ForecastGate(self.version, self.gate.config)
            if "gate" in state:  # absent before the promotion gate: a fresh lineage, the learner serves
                self.gate.load_state_dict(state["gate"], self.learner)
            pending = state.get("pending", [])  # absent before versions were served by hand
            saved = [parse_record(o, Outcome) for o in pending]
            self.pending = {o.seq: o for o in saved if isinstance(o, Outcome)}


def _table_entry(saved: tuple[Any, ...], version: int) -> LatestForecast:
    """A checkpointed table entry; one saved before the gate has no version: the learner's made it."""
    ts, values, weights, *made_by = saved
    return LatestForecast(ts, values, weights, made_by[0] if made_by else version)


#: Worker options that are no forecaster spec field (a serving replica ignores them all).
SERVICE_OPTIONS = (
    "batch_size",
    "max_train_batch",
    "series_ttl_s",
    "batch_window_s",
    *PromotionConfig.option_names(),
)


def build_service(data_dir: Path, **options: Any) -> ForecastService:
    """A service, warm-started from ``<data_dir>/pretrained/<kind>`` if ``forecasters pretrain`` ran.

    ``options`` are :class:`ForecasterSpec` fields (kind, seq_len, horizon, channels, ...),
    ``batch_size``, ``batch_window_s``, ``max_train_batch``, ``series_ttl_s`` and the promotion
    gate's and probation's (:class:`PromotionConfig`). With a pretrained checkpoint its spec wins;
    an option contradicting it is an error. The worker passes ``data_dir = <home>/forecast``;
    versions served by hand go to the deployment's checkpoint store.
    """
    root = Settings.from_env(home=data_dir.parent).checkpoint_root
    service_options: dict[str, Any] = {
        "promotion": PromotionConfig.pop_from(options),
        "checkpoint_root": root,
    }
    service_options.update({k: options.pop(k) for k in SERVICE_OPTIONS if k in options})
    spec = ForecasterSpec.from_dict(options)
    found = load_pretrained(Path(data_dir), spec.kind)
    if found is None:
        return ForecastService(spec, **service_options)
    saved_spec, learner, scaler, version = found
    clashes = {k: (v, getattr(saved_spec, k)) for k, v in options.items() if getattr(saved_spec, k) != v}
    if clashes:
        raise ValueError(
            f"options contradict the pretrained {spec.kind} v{version}: "
            + ", ".join(f"{k}={given} vs saved {saved}" for k, (given, saved) in clashes.items())
        )
    return ForecastService(saved_spec, learner, scaler, version, **service_options)
