// The labeling page's script. Requests go through driftline.call (driftline-auth.js), which sends
// the session's token; the service takes the annotator's name from that token, never from the page.
// Producer-supplied text (query text, titles, snippets, ids) is only ever set as textContent, never
// as HTML; links and images are used only when they are http(s) (the schema refuses others too).
// Keyboard: Enter takes a task or submits it, 0-4 grade the highlighted row, arrows move, S skips.
"use strict";
const $ = (id) => document.getElementById(id);
let current = null;   // the task on screen
let focusAt = 0;      // the highlighted row
let signedIn = null;
let leaseEnds = null; // the lease's end, in the server's seconds
let skew = 0;         // server clock - browser clock, seconds (from /labeling/status)

function say(text, kind) {
  $("status").textContent = text;
  $("status").className = kind || "";
}

function ready() {
  if (!signedIn) { say("Sign in with your annotator token first.", "error"); return false; }
  return true;
}

const call = (method, url, body) => window.driftline.call(method, url, body);

function webUrl(text) {
  try {
    const url = new URL(text);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch { return null; }
}

function element(tag, props, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

function gradeCell(docId, maxGrade) {
  const set = element("fieldset", {});
  for (let g = 0; g <= maxGrade; g++) {
    const radio = element("input", { type: "radio", name: `grade-${docId}`, value: String(g), tabIndex: -1 });
    radio.dataset.doc = docId;
    set.append(element("label", {}, radio, ` ${g} `));
  }
  return set;
}

function docCell(doc) {
  const text = element("div", {});
  const link = doc.url && webUrl(doc.url);
  const name = doc.title || doc.doc_id;
  text.append(link
    ? element("a", { className: "title", href: link, target: "_blank", rel: "noopener noreferrer", textContent: name })
    : element("div", { className: "title", textContent: name }));
  if (doc.snippet) text.append(element("div", { className: "snippet", textContent: doc.snippet }));
  if (doc.title) text.append(element("div", { className: "doc-id", textContent: doc.doc_id }));
  const cell = element("td", {}, element("div", { className: "doc" }, text));
  const image = doc.image_url && webUrl(doc.image_url);
  if (image) {
    const img = element("img", { src: image, alt: "", referrerPolicy: "no-referrer" });
    img.addEventListener("error", () => img.remove());  // unreachable, or refused by the page's CSP
    cell.firstChild.prepend(img);
  }
  return cell;
}

function rows() { return [...$("docs").querySelectorAll("tr")]; }

function focusRow(index) {
  const all = rows();
  if (!all.length) return;
  focusAt = Math.max(0, Math.min(all.length - 1, index));
  all.forEach((tr, i) => { tr.classList.toggle("focused", i === focusAt); tr.ariaSelected = String(i === focusAt); });
  all[focusAt].focus();
}

function grade(value) {
  const tr = rows()[focusAt];
  const radio = tr && tr.querySelector(`input[value="${value}"]`);
  if (!radio) return;
  radio.checked = true;
  focusRow(focusAt + 1);
}

const serverNow = () => Date.now() / 1000 + skew;

function progress(view) {
  $("depth").textContent = String(view.queue.queued);
  $("labeled").textContent = String(view.labeled);
}

// Queue depth and the server's clock; a lease counts down by the server's clock, not the browser's.
async function refreshStatus() {
  const sent = Date.now() / 1000;
  const status = await call("GET", "/labeling/status");
  skew = status.now - (sent + Date.now() / 1000) / 2;
  $("depth").textContent = String(status.queue.queued);
}

function tick() {
  if (leaseEnds === null) { $("lease-left").textContent = "–"; return; }
  const left = Math.max(0, Math.round(leaseEnds - serverNow()));
  $("lease-left").textContent = `${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")}`;
  if (left === 0 && current) {
    say("Your lease expired: press Enter for a task (your grades would be refused).", "error");
    leaseEnds = null;
  }
}

function show(view) {
  current = view.task;
  $("query-text").textContent = current.text || current.query_id;
  $("query").textContent = current.query_id;
  $("task-id").textContent = current.task_id;
  $("score").textContent = Number(current.score).toFixed(3);
  $("selector").textContent = current.selector;
  leaseEnds = view.lease_expires;
  $("docs").replaceChildren(...current.documents.map((doc) => {
    const tr = element("tr", { tabIndex: -1 }, docCell(doc), element("td", {}, gradeCell(doc.doc_id, view.max_grade)));
    tr.dataset.doc = doc.doc_id;
    tr.addEventListener("click", () => focusRow(rows().indexOf(tr)));
    return tr;
  }));
  $("task").hidden = false;
  focusRow(0);
  tick();
}

function clear() {
  current = null;
  leaseEnds = null;
  $("task").hidden = true;
  tick();
}

async function next(before = "") {
  if (!ready()) return;
  try {
    const [view] = await Promise.all([call("GET", "/labeling/next"), refreshStatus()]);
    progress(view);
    if (!view.task) {
      clear();
      say(`${before}No task waiting (queued ${view.queue.queued}, leased ${view.queue.leased}).`);
      return;
    }
    show(view);
    say(`${before}Task ${view.task.task_id} is yours for ${Math.round(view.lease_expires - serverNow())} s.`);
  } catch (err) { say(err.message, "error"); }
}

async function submit(event) {
  if (event) event.preventDefault();
  if (!ready() || !current) return;
  const grades = {};
  for (const radio of $("docs").querySelectorAll("input[type=radio]:checked")) {
    grades[radio.dataset.doc] = Number(radio.value);
  }
  const missing = current.documents.findIndex((d) => !(d.doc_id in grades));
  if (missing >= 0) {
    const left = current.documents.filter((d) => !(d.doc_id in grades)).length;
    say(`Grade every document first (${left} left).`, "error");
    focusRow(missing);
    return;
  }
  try {
    await call("POST", `/labeling/${encodeURIComponent(current.task_id)}`, { grades });
    const done = current;
    clear();
    await next(`Submitted ${Object.keys(grades).length} grades for ${done.query_id}. `);
  } catch (err) { say(err.message, "error"); }
}

async function skip() {
  if (!ready() || !current) return;
  try {
    const skipped = current;
    await call("POST", `/labeling/${encodeURIComponent(current.task_id)}/skip`, {});
    clear();
    await next(`Skipped ${skipped.query_id}. `);
  } catch (err) { say(err.message, "error"); }
}


function onKey(event) {
  const typing = event.target.closest && event.target.closest("input[type=password], input[type=text], textarea");
  if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key;
  if (key === "Enter") {
    if (event.target.closest && event.target.closest("button, a")) return;  // their own click
    event.preventDefault();
    if (current) submit(); else next();
    return;
  }
  if (!current) return;
  if (/^[0-9]$/.test(key) && rows()[focusAt]?.querySelector(`input[value="${key}"]`)) {
    event.preventDefault(); grade(key);
  } else if (key === "ArrowDown" || key === "ArrowUp") {
    event.preventDefault(); focusRow(focusAt + (key === "ArrowDown" ? 1 : -1));
  } else if (key === "s" || key === "S") {
    event.preventDefault(); skip();
  }
}

$("load").addEventListener("click", () => next());
$("grades").addEventListener("submit", submit);
$("skip").addEventListener("click", skip);
document.addEventListener("keydown", onKey);
setInterval(tick, 1000);
setInterval(() => { if (signedIn) refreshStatus().catch(() => {}); }, 15000);  // errors: next poll
window.driftline.onSignIn((principal) => {
  const first = !signedIn && principal;
  signedIn = principal;
  if (first) next();
  else if (!principal) say("Sign in with your annotator token (driftline annotators add NAME prints one).");
});
