// The dashboard's script: every 2 s it reads GET /status (one summary per service), GET /health
// (drift alarms) and, less often, GET /models (versions), keeps each service's history in the page
// and draws it with uPlot. Routes a server does not have (404) are shown as "not available".
// Server-supplied text (names, reasons, evidence) is only ever set as textContent, never as HTML.
"use strict";
const POLL_MS = 2000;
const MODELS_EVERY = 3; // versions change slowly: /models every third poll
const KEEP = 1800; // points per series: an hour at one every 2 s
const CHART_HEIGHT = 150;
const $ = (id) => document.getElementById(id);

// Everything the page knows; tests and curious users read it from the console.
const state = { polls: 0, admin: false, routes: {}, health: null, models: null, services: {} };
window.driftlineDashboard = state;

function el(tag, props, ...children) {
  const node = Object.assign(document.createElement(tag), props || {});
  node.append(...children);
  return node;
}

// GET with the session's token (driftline-auth.js), answering the status code instead of throwing,
// so a 404 can read "not available" and a 401 can ask for a token.
async function get(path) {
  const headers = {};
  if (window.driftline.token()) headers.Authorization = `Bearer ${window.driftline.token()}`;
  try {
    const answer = await fetch(path, { headers });
    return { code: answer.status, body: await answer.json().catch(() => ({})) };
  } catch (err) {
    return { code: 0, body: { error: err.message } };
  }
}

const number = (v, digits) =>
  v === null || v === undefined ? "–" : Number(v).toLocaleString(undefined, { maximumFractionDigits: digits });

const ago = (ts) => (ts ? `${Math.max(0, Math.round(Date.now() / 1000 - ts))} s ago` : "never");

function when(ts) {
  if (ts === null || ts === undefined) return "–";
  const date = typeof ts === "number" ? new Date(ts * 1000) : new Date(ts);
  return Number.isNaN(date.getTime()) ? String(ts) : date.toLocaleString();
}

// A short one-line form of evidence, offsets or validation, whatever their shape.
const plain = (v) => (typeof v === "number" && !Number.isInteger(v) ? Number(v.toPrecision(4)) : v);

// An evidence field: times (keys ending in _at, epoch seconds) as dates, not rounded to 1.796e9.
const field = (key, v) => (key.endsWith("_at") && typeof v === "number" ? when(v) : plain(v));

function brief(value) {
  if (value === null || value === undefined) return "–";
  let text = String(plain(value));
  if (typeof value === "object") {
    const parts = Object.entries(value)
      .map(([k, v]) => `${k}=${v !== null && typeof v === "object" ? JSON.stringify(v) : field(k, v)}`);
    text = parts.length ? parts.join(", ") : "none";
  }
  return text.length > 300 ? `${text.slice(0, 300)}…` : text;
}

function note(text, className) {
  return el("p", { className: className || "note", textContent: text });
}

function routeProblem(name, code, body) {
  if (code === 404) return `${name} not available (GET /${name} answered 404 on this server)`;
  if (code === 401) return `sign in with a reader token to see ${name} (GET /${name} answered 401)`;
  return `${name} unavailable: ${body && body.error ? body.error : `HTTP ${code}`}`;
}

// -- charts -------------------------------------------------------------------------------------
const fromZero = (u, min, max) => [0, max > 0 ? max * 1.1 : 1];
// Clock times only, spaced for a phone: uPlot's default adds a date line that crowds narrow charts.
const clock = { space: 80, values: (u, splits) => splits.map((ts) => new Date(ts * 1000).toLocaleTimeString()) };
// Counts as 950, 12K, 1.2M: a narrow axis never clips them.
const short = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 1 });
const counts = (u, splits) => splits.map((v) => short.format(v));

function rateChart(svc, box) {
  return new uPlot({
    width: box.clientWidth, height: CHART_HEIGHT,
    scales: { x: { time: true }, rate: { range: fromZero }, lag: { range: fromZero } },
    legend: { live: false },
    series: [{}, { label: "events/s", scale: "rate", stroke: "#1565c0", width: 2 },
             { label: "lag", scale: "lag", stroke: "#c62828", width: 1, dash: [4, 3] }],
    axes: [clock, { scale: "rate", size: 48, values: counts },
           { scale: "lag", side: 1, size: 48, values: counts, grid: { show: false } }],
  }, [svc.t, svc.rate, svc.lag], box);
}

function metricChart(svc, box) {
  return new uPlot({
    width: box.clientWidth, height: CHART_HEIGHT, legend: { show: false },
    scales: { x: { time: true } },
    series: [{}, { label: "metric", stroke: "#2e7d32", width: 2, spanGaps: false }],
    axes: [clock, { size: 56 }],
  }, [svc.t, svc.metric], box);
}

// Charts follow their card's width (one column on a phone, several on a wide screen).
const resized = new ResizeObserver((entries) => {
  for (const entry of entries) {
    const chart = entry.target.chart;
    const width = Math.floor(entry.contentRect.width);
    if (chart && width > 0 && width !== chart.width) chart.setSize({ width, height: CHART_HEIGHT });
  }
});

// -- one card per service -------------------------------------------------------------------------
const FIGURES = [["rate", "events/s"], ["lag", "lag"], ["batch", "last batch"], ["metric", "metric"],
                 ["version", "model"], ["ready", "ready"]];

function makeCard(name) {
  const figures = {};
  const list = el("dl", { className: "figures" });
  for (const [key, label] of FIGURES) {
    figures[key] = el("dd", { textContent: "–" });
    figures[key].dataset.figure = key;
    list.append(el("div", {}, el("dt", { textContent: label }), figures[key]));
  }
  const svc = {
    name, figures, row: null, t: [], rate: [], lag: [], metric: [], metricName: null, charts: {},
    badge: el("span", { className: "badge muted", textContent: "…" }),
    metricTitle: el("p", { className: "chart-title", textContent: "progressive metric" }),
    drift: el("div", { className: "drift" }),
    versions: el("div", { className: "versions" }),
    action: el("p", { className: "note", role: "status" }),
    versionsKey: null,
  };
  const rateBox = el("div", { className: "chart rate" });
  const metricBox = el("div", { className: "chart metric" });
  svc.node = el("section", { className: "card" },
    el("h2", {}, el("span", { textContent: name }), svc.badge), list,
    el("p", { className: "chart-title", textContent: "events/s and lag (dashed, right axis)" }), rateBox,
    svc.metricTitle, metricBox,
    el("h3", { textContent: "Drift" }), svc.drift,
    el("h3", { textContent: "Versions" }), svc.versions, svc.action);
  svc.node.dataset.service = name;
  const after = [...$("services").children].find((card) => card.dataset.service > name);
  $("services").insertBefore(svc.node, after || null);
  if (typeof uPlot === "function") {
    svc.charts.rate = rateBox.chart = rateChart(svc, rateBox);
    svc.charts.metric = metricBox.chart = metricChart(svc, metricBox);
    resized.observe(rateBox);
    resized.observe(metricBox);
  }
  return svc;
}

function record(ts, rows) {
  const live = new Set();
  for (const row of rows) {
    const svc = state.services[row.service] || (state.services[row.service] = makeCard(row.service));
    live.add(row.service);
    svc.row = row;
    svc.metricName = row.metric ? row.metric.name : svc.metricName;
  }
  for (const svc of Object.values(state.services)) {
    if (!live.has(svc.name)) svc.row = null; // its process stopped publishing: a gap in the plot
    const row = svc.row;
    svc.t.push(ts);
    svc.rate.push(row ? row.events_per_s : null);
    svc.lag.push(row ? row.lag : null);
    svc.metric.push(row && row.metric ? row.metric.value : null);
    if (svc.t.length > KEEP) for (const series of [svc.t, svc.rate, svc.lag, svc.metric]) series.shift();
  }
}

function renderFigures(svc) {
  const row = svc.row;
  const f = svc.figures;
  if (!row) {
    svc.badge.className = "badge muted";
    svc.badge.textContent = "no live status row";
    return;
  }
  f.rate.textContent = number(row.events_per_s, 1);
  f.lag.textContent = number(row.lag, 0);
  f.batch.textContent = ago(row.last_batch_ts);
  f.metric.textContent = row.metric ? `${row.metric.name} ${Number(row.metric.value).toPrecision(4)}` : "–";
  f.version.textContent = `v${row.model_version}`;
  f.ready.textContent = `${row.ready}/${row.instances}`;
  const healthy = row.ready === row.instances && row.statuses.length === 1 && row.statuses[0] === "ok";
  svc.badge.className = `badge ${healthy ? "ok" : "warn"}`;
  svc.badge.textContent = healthy ? "ok" : row.statuses.join(", ") || "not ready";
  svc.metricTitle.textContent = `progressive metric${svc.metricName ? `: ${svc.metricName}` : " (none reported yet)"}`;
}

function renderDrift(svc) {
  const health = state.health;
  if (state.routes.health !== 200) {
    svc.drift.replaceChildren(note(routeProblem("health", state.routes.health, health)));
    return;
  }
  const drift = (health.drift || {})[svc.name] || ((health.services || {})[svc.name] || {}).drift;
  if (!drift) {
    svc.drift.replaceChildren(note("drift alarms not available: this server reports no drift detector here"));
    return;
  }
  const { alarms, last_alarm_ts: last, in_alarm: inAlarm, ...rest } = drift;
  const badge = el("span", { className: `badge ${inAlarm ? "alarm" : "ok"}`,
                             textContent: inAlarm ? "drift alarm" : "no drift now" });
  const counts = ` ${number(alarms || 0, 0)} alarm(s)${last ? `, last at ${when(last)}` : ""}`;
  svc.drift.replaceChildren(el("p", {}, badge, counts));
  if (Object.keys(rest).length) svc.drift.append(note(brief(rest)));
}

async function act(svc, action, version) {
  const path = `/models/${encodeURIComponent(svc.name)}/${action}`;
  svc.action.className = "note";
  svc.action.textContent = `${action}…`;
  try {
    const answer = await window.driftline.call("POST", path, version === undefined ? {} : { version });
    svc.action.textContent = `${action}: ${brief(answer)}`;
    await refreshModels();
  } catch (err) {
    svc.action.className = "error";
    svc.action.textContent = `${action} refused: ${err.message}`;
  }
}

function button(text, onClick) {
  const node = el("button", { type: "button", textContent: text });
  node.addEventListener("click", onClick);
  return node;
}

function versionItem(svc, v, serving) {
  const head = el("div", {}, el("strong", { textContent: `v${v.version}` }), ` trained ${when(v.trained_at)} `);
  if (serving) head.append(el("span", { className: "badge ok", textContent: "serving" }));
  else if (state.admin) head.append(button("Promote", () => act(svc, "promote", v.version)));
  const details = el("ul", {},
    el("li", { textContent: `offsets: ${brief(v.offsets)}` }),
    el("li", { textContent: `validation: ${brief(v.validation)}` }));
  for (const h of v.history || []) {
    const evidence = h.evidence === undefined ? "" : ` (${brief(h.evidence)})`;
    details.append(el("li", { textContent: `${h.action} at ${when(h.at)}: ${h.reason || ""}${evidence}` }));
  }
  const item = el("li", { className: serving ? "serving" : "" }, head, details);
  item.dataset.version = String(v.version);
  return item;
}

function renderVersions(svc) {
  const entry = state.models ? state.models[svc.name] : undefined;
  const key = JSON.stringify([state.admin, state.routes.models, entry]);
  if (key === svc.versionsKey) return; // unchanged: keep the buttons under the pointer
  svc.versionsKey = key;
  if (state.routes.models === undefined) {
    svc.versions.replaceChildren(note("loading…"));
  } else if (state.routes.models !== 200) {
    svc.versions.replaceChildren(note(routeProblem("models", state.routes.models, state.modelsError)));
  } else if (!entry || !(entry.versions || []).length) {
    svc.versions.replaceChildren(note("no versions recorded for this service yet"));
  } else {
    const versions = [...entry.versions].sort((a, b) => Number(b.version) - Number(a.version));
    const list = el("ol", { className: "versions" },
      ...versions.slice(0, 10).map((v) => versionItem(svc, v, String(v.version) === String(entry.serving))));
    const parts = [list];
    if (versions.length > 10) parts.push(note(`${versions.length - 10} older version(s) not shown`));
    // One version (a service that keeps none) has nothing to roll back to.
    if (state.admin && versions.length > 1) {
      parts.push(el("p", {}, button("Roll back", () => act(svc, "rollback"))));
    }
    svc.versions.replaceChildren(...parts);
  }
}

function render() {
  for (const svc of Object.values(state.services)) {
    renderFigures(svc);
    for (const chart of Object.values(svc.charts)) chart.setData(chart === svc.charts.rate
      ? [svc.t, svc.rate, svc.lag] : [svc.t, svc.metric]);
    renderDrift(svc);
    renderVersions(svc);
  }
}

async function refreshModels() {
  const answer = await get("/models");
  state.routes.models = answer.code;
  state.models = answer.code === 200 ? answer.body : null;
  state.modelsError = answer.code === 200 ? null : answer.body;
  render();
}

async function poll() {
  const [status, health] = await Promise.all([get("/status"), get("/health")]);
  if (state.polls % MODELS_EVERY === 0) await refreshModels();
  state.polls += 1;
  state.routes.status = status.code;
  state.routes.health = health.code;
  state.health = health.body;
  const problems = [];
  if (typeof uPlot !== "function") problems.push("the chart library (/vendor/uPlot.iife.min.js) did not load");
  if (status.code === 200) {
    record(status.body.ts, status.body.services);
    const count = status.body.services.length;
    $("updated").textContent = `${count} live service(s) · updated ${new Date().toLocaleTimeString()}`;
    if (!count) problems.push("no live status rows yet: workers publish one every 2 s once they run");
  } else {
    problems.push(routeProblem("status", status.code, status.body));
  }
  $("problem").textContent = problems.join("; ");
  $("problem").hidden = !problems.length;
  render();
  setTimeout(poll, POLL_MS);
}

window.driftline.onSignIn((principal) => {
  state.admin = Boolean(principal && principal.role === "admin");
  render();
});
poll();
