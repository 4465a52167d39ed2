// The labeling page's script. Requests go through driftline.call (driftline-auth.js), which sends
// the session's token; the service takes the annotator's name from that token, never from the page.
// Producer-supplied text (ids, documents) is only ever set as textContent, never as HTML.
"use strict";
const $ = (id) => document.getElementById(id);
let current = null;
let signedIn = null;

function say(text, kind) {
  $("status").textContent = text;
  $("status").className = kind || "";
}

function ready() {
  if (!signedIn) { say("Sign in with your annotator token first.", "error"); return false; }
  return true;
}

const call = (method, url, body) => window.driftline.call(method, url, body);

function gradeCell(docId, maxGrade) {
  const set = document.createElement("fieldset");
  for (let g = 0; g <= maxGrade; g++) {
    const label = document.createElement("label");
    const radio = document.createElement("input");
    radio.type = "radio";
    radio.name = `grade-${docId}`;
    radio.value = String(g);
    radio.dataset.doc = docId;
    label.append(radio, ` ${g} `);
    set.append(label);
  }
  return set;
}

function show(view) {
  current = view.task;
  $("query").textContent = current.query_id;
  $("task-id").textContent = current.task_id;
  $("score").textContent = Number(current.score).toFixed(3);
  $("selector").textContent = current.selector;
  $("lease").textContent = new Date(view.lease_expires * 1000).toLocaleTimeString();
  const rows = current.documents.map((doc) => {
    const tr = document.createElement("tr");
    tr.dataset.doc = doc.doc_id;
    const name = document.createElement("td");
    name.textContent = doc.doc_id;
    const grade = document.createElement("td");
    grade.append(gradeCell(doc.doc_id, view.max_grade));
    const feats = document.createElement("td");
    feats.className = "features";
    feats.textContent = doc.features.slice(0, 8).map((v) => Number(v).toPrecision(3)).join("  ");
    tr.append(name, grade, feats);
    return tr;
  });
  $("docs").replaceChildren(...rows);
  $("task").hidden = false;
}

async function next() {
  if (!ready()) return;
  try {
    const view = await call("GET", "/labeling/next");
    if (!view.task) {
      current = null;
      $("task").hidden = true;
      say(`No task waiting (queued ${view.queue.queued}, leased ${view.queue.leased}).`);
      return;
    }
    show(view);
    say(`Task ${view.task.task_id} is yours for ${Math.round(view.lease_s)} s.`);
  } catch (err) { say(err.message, "error"); }
}

async function submit(event) {
  event.preventDefault();
  if (!ready() || !current) return;
  const grades = {};
  for (const radio of $("docs").querySelectorAll("input[type=radio]:checked")) {
    grades[radio.dataset.doc] = Number(radio.value);
  }
  const missing = current.documents.filter((d) => !(d.doc_id in grades)).length;
  if (missing) { say(`Grade every document first (${missing} left).`, "error"); return; }
  try {
    await call("POST", `/labeling/${encodeURIComponent(current.task_id)}`, { grades });
    say(`Submitted ${Object.keys(grades).length} grades for ${current.query_id}. Thank you!`, "ok");
    current = null;
    $("task").hidden = true;
  } catch (err) { say(err.message, "error"); }
}

async function skip() {
  if (!ready() || !current) return;
  try {
    await call("POST", `/labeling/${encodeURIComponent(current.task_id)}/skip`, {});
    say(`Skipped ${current.query_id}.`);
    await next();
  } catch (err) { say(err.message, "error"); }
}

$("load").addEventListener("click", next);
$("grades").addEventListener("submit", submit);
$("skip").addEventListener("click", skip);
window.driftline.onSignIn((principal) => {
  const first = !signedIn && principal;
  signedIn = principal;
  if (first) next();
  else if (!principal) say("Sign in with your annotator token (driftline annotators add NAME prints one).");
});
