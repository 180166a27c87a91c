// The operator console's page: plain ES module, no build step. Every call sends the token in the Authorization
// header (no cookies); every text from the server goes into the page through textContent, never as HTML.

const $ = (sel) => document.querySelector(sel);
const state = { token: sessionStorage.getItem("facegate-token"), role: null, before: null, stream: null,
  captured: [], media: null };
const RANK = { viewer: 0, operator: 1, admin: 2 };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return node;
}

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${state.token}`, ...(options.headers || {}) };
  const answer = await fetch(`/api${path}`, { ...options, headers });
  if (answer.status === 401) { signOut("The token was refused (unknown or revoked)."); throw new Error("401"); }
  const type = answer.headers.get("content-type") || "";
  const body = type.includes("json") ? await answer.json() : await answer.text();
  if (!answer.ok) throw new Error(body.detail ? (typeof body.detail === "string" ? body.detail
    : JSON.stringify(body.detail)) : `${answer.status}`);
  return body;
}

const can = (role) => RANK[state.role] >= RANK[role];
const when = (t) => (t ? new Date(t).toLocaleString() : "");
const num = (x, d = 3) => (x === null || x === undefined ? "" : Number(x).toFixed(d));

// ------------------------------------------------------------------------------------------------------ sign-in
function signOut(message = "") {
  sessionStorage.removeItem("facegate-token");
  state.token = null;
  if (state.stream) state.stream.abort();
  state.stream = null;
  $("#app").hidden = true; $("#tabs").hidden = true; $("#logout").hidden = true; $("#login").hidden = false;
  $("#login-error").textContent = message;
}

async function signIn() {
  try {
    const status = await api("/status");
    state.role = status.token.role;
    $("#who").textContent = `${status.token.name} (${status.token.role})`;
    $("#login").hidden = true; $("#app").hidden = false; $("#tabs").hidden = false; $("#logout").hidden = false;
    showStatus(status);
    showTab("people");
    setInterval(async () => showStatus(await api("/status")), 3000);
  } catch (err) {
    if (err.message !== "401") signOut(err.message);
  }
}

function showStatus(status) {
  const pill = $("#daemon");
  pill.textContent = `daemon: ${status.daemon}${status.reason ? ` (${status.reason})` : ""}`;
  pill.className = `pill ${status.daemon === "up" ? "up" : "down"}`;
}

function showTab(name) {
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const s of document.querySelectorAll(".tab")) s.hidden = s.id !== `tab-${name}`;
  if (name === "people") loadPeople();
  // The stream stays open when the operator looks at another tab, so decisions made meanwhile (say, the grant
  // of a person just enrolled) are still there, marked new, on coming back; reload only on first opening.
  if (name === "decisions" && !state.stream) { loadDecisions(true); follow(); }
  if (name === "system") loadSystem();
}

// ------------------------------------------------------------------------------------------------------ people
async function loadPeople() {
  const { identities } = await api("/identities");
  $("#people-count").textContent = `(${identities.length})`;
  const body = $("#people tbody");
  body.replaceChildren(...identities.map((p) => el("tr", { "data-id": p.id },
    el("td", {}, p.name), el("td", {}, p.groups.join(", ")), el("td", {}, String(p.templates)),
    el("td", {}, when(p.created_at)),
    el("td", {},
      can("operator") ? el("button", { onclick: () => editGroups(p) }, "Groups") : "",
      can("operator") ? el("button", { onclick: () => rename(p) }, "Rename") : "",
      can("admin") ? el("button", { class: "remove", onclick: () => remove(p) }, "Remove") : ""))));
}

async function editGroups(p) {
  const text = prompt(`Groups of ${p.name} (comma-separated)`, p.groups.join(", "));
  if (text === null) return;
  await patch(p, { groups: text.split(",").map((g) => g.trim()).filter(Boolean) });
}

async function rename(p) {
  const name = prompt(`New name for ${p.name}`, p.name);
  if (name) await patch(p, { name });
}

async function patch(p, body) {
  try {
    await api(`/identities/${p.id}`, { method: "PATCH", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body) });
  } catch (err) { alert(err.message); }
  loadPeople();
}

async function remove(p) {
  if (!confirm(`Erase ${p.name} and their ${p.templates} template(s)? The door stops recognising them.`)) return;
  try { await api(`/identities/${p.id}?compact=true`, { method: "DELETE" }); } catch (err) { alert(err.message); }
  loadPeople();
}

async function enrol(event) {
  event.preventDefault();
  const form = new FormData();
  form.append("name", $("#enrol-name").value);
  for (const g of $("#enrol-groups").value.split(",").map((s) => s.trim()).filter(Boolean)) form.append("groups", g);
  for (const f of $("#enrol-files").files) form.append("photos", f, f.name);
  state.captured.forEach((blob, i) => form.append("photos", blob, `camera-${i + 1}.jpg`));
  const out = $("#enrol-result");
  out.replaceChildren(el("p", { class: "muted" }, "Enrolling…"));
  try {
    const report = await api("/identities", { method: "POST", body: form });
    out.replaceChildren(el("p", {}, `${report.enrolled} enrolled, ${report.skipped} skipped, ${report.refused} refused`),
      el("ul", { class: "results" }, ...report.results.map((r) => el("li", { class: r.status },
        `${r.file}: ${r.status}${r.reason ? ` — ${r.reason}` : ""}${r.quality && r.quality.inter_eye_px
          ? ` (inter-eye ${r.quality.inter_eye_px} px, sharpness ${r.quality.sharpness})` : ""}`))));
    state.captured = []; $("#captured").replaceChildren(); $("#enrol-files").value = "";
    if (report.enrolled) { $("#enrol-name").value = ""; $("#enrol-groups").value = ""; }
  } catch (err) { out.replaceChildren(el("p", { class: "error" }, err.message)); }
  loadPeople();
}

async function openCamera() {
  try {
    state.media = await navigator.mediaDevices.getUserMedia({ video: { width: 1280, height: 720 } });
    $("#camera-video").srcObject = state.media;
    $("#camera").hidden = false;
  } catch (err) { alert(`No camera: ${err.message}`); }
}

function closeCamera() {
  if (state.media) state.media.getTracks().forEach((t) => t.stop());
  state.media = null; $("#camera").hidden = true;
}

function shoot() {
  const video = $("#camera-video");
  const canvas = el("canvas");
  canvas.width = video.videoWidth; canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  canvas.toBlob((blob) => {
    state.captured.push(blob);
    $("#captured").append(el("img", { src: URL.createObjectURL(blob), alt: "captured photo" }));
  }, "image/jpeg", 0.92);
}

// --------------------------------------------------------------------------------------------------- decisions
function filters() {
  const q = new URLSearchParams();
  for (const k of ["type", "door", "camera", "person"]) if ($(`#f-${k}`).value) q.set(k, $(`#f-${k}`).value);
  for (const k of ["since", "until"]) if ($(`#f-${k}`).value) q.set(k, new Date($(`#f-${k}`).value).toISOString());
  return q;
}

async function loadDecisions(reset) {
  const q = filters();
  if (!reset && state.before !== null) q.set("before", state.before);
  const page = await api(`/decisions?${q}`);
  const rows = page.decisions.map((r) => decisionRow(r));
  if (reset) $("#decisions tbody").replaceChildren(...rows); else $("#decisions tbody").append(...rows);
  state.before = page.next_before;
  $("#older").hidden = page.next_before === null;
}

function decisionRow(record, fresh = false) {
  const e = record.event;
  const reviews = (record.reviews || []).map((r) => `${r.verdict} by ${r.token}${r.note ? `: ${r.note}` : ""}`);
  const actions = el("td", {});
  if (can("operator")) {
    actions.append(el("button", { onclick: () => review(e, "wrong") }, e.type === "unknown" ? "Known person" :
      `Not ${e.person_name || "them"}`));
    actions.append(el("button", { onclick: () => enrolFromSnapshot(e) }, "Enrol face"));
    loadSnapshot(e.event_id, actions);
  }
  return el("tr", { class: fresh ? "new" : "", "data-event": e.event_id },
    el("td", {}, when(e.decided_at)), el("td", { class: "type" }, el("span", { class: e.type }, e.type)),
    el("td", {}, e.person_name || ""), el("td", {}, `${e.door} / ${e.camera}`), el("td", {}, num(e.score)),
    el("td", {}, num(e.margin)), el("td", {}, e.reason || ""), el("td", { class: "reviews" }, reviews.join("; ")),
    actions);
}

async function loadSnapshot(eventId, cell) {
  const answer = await fetch(`/api/decisions/${eventId}/snapshot`, { headers: { Authorization: `Bearer ${state.token}` } });
  if (!answer.ok) return;
  cell.prepend(el("img", { class: "snap", src: URL.createObjectURL(await answer.blob()), alt: "face" }));
}

async function review(e, verdict) {
  const note = prompt(e.type === "unknown" ? "Who was it?" : `This was not ${e.person_name}. Who was it?`, "");
  if (note === null) return;
  try {
    const out = await api(`/decisions/${e.event_id}/review`, { method: "POST",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify({ verdict, note }) });
    const row = document.querySelector(`tr[data-event="${e.event_id}"] td.reviews`);
    if (row) row.textContent = out.reviews.map((r) => `${r.verdict} by ${r.token}${r.note ? `: ${r.note}` : ""}`).join("; ");
  } catch (err) { alert(err.message); }
}

async function enrolFromSnapshot(e) {
  const name = prompt("Enrol this face as (name):", e.person_name || "");
  if (!name) return;
  try {
    const r = await api(`/decisions/${e.event_id}/enrol`, { method: "POST",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify({ name }) });
    alert(r.results.map((x) => `${x.status}${x.reason ? `: ${x.reason}` : ""}`).join("\n"));
  } catch (err) { alert(err.message); }
}

// Server-sent events read through fetch (EventSource cannot send the Authorization header).
async function follow() {
  if (state.stream) state.stream.abort();
  const control = new AbortController();
  state.stream = control;
  const q = filters(); q.delete("since"); q.delete("until"); q.delete("person");
  try {
    const answer = await fetch(`/api/decisions/stream?${q}`, { headers: { Authorization: `Bearer ${state.token}` },
      signal: control.signal });
    if (!answer.ok) throw new Error(`${answer.status}`);
    $("#live").textContent = "live: on"; $("#live").className = "pill up";
    const reader = answer.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
        const type = (block.match(/^event: (.*)$/m) || [])[1];
        const data = (block.match(/^data: (.*)$/m) || [])[1];
        if (type === "decision" && data) $("#decisions tbody").prepend(decisionRow(JSON.parse(data), true));
      }
    }
  } catch (err) {
    if (control.signal.aborted) return;
  }
  $("#live").textContent = "live: reconnecting"; $("#live").className = "pill down";
  setTimeout(() => { if (state.stream === control && state.token) follow(); }, 2000);
}

// ------------------------------------------------------------------------------------------------------ system
async function loadSystem() {
  const [cams, doors, pack] = await Promise.all([api("/cameras"), api("/doors"), api("/pack")]);
  const last = (d) => (d ? `${d.type}${d.person_name ? ` ${d.person_name}` : ""} ${when(d.decided_at)}` : "");
  $("#cameras tbody").replaceChildren(...cams.cameras.map((c) => el("tr", {}, el("td", {}, c.id),
    el("td", {}, c.door || ""), el("td", {}, el("span", { class: `pill ${c.state === "reading" ? "up" : "down"}` },
      c.state || "?")), el("td", {}, num(c.fps, 1)), el("td", {}, String(c.dropped ?? "")),
    el("td", { class: "error" }, c.last_error || ""), el("td", {}, last(c.last_decision)))));
  $("#doors tbody").replaceChildren(...doors.doors.map((d) => el("tr", {}, el("td", {}, d.id),
    el("td", {}, (d.cameras || []).join(", ")),
    el("td", {}, d.allowed_groups === null ? "everyone enrolled" : d.allowed_groups.join(", ") || "nobody"),
    el("td", {}, d.schedule ? `${d.schedule.timezone}, ${d.schedule.windows.length} window(s)` : "any time"),
    el("td", {}, last(d.last_decision)))));
  const force = pack.in_force;
  $("#pack-summary").textContent = force ? `Pack ${force.pack.name}: ${force.pack.metric} score ${
    force.pack.metric === "euclidean" ? "≤" : "≥"} ${force.pack.threshold} (${force.pack.threshold_source}${
    force.pack.operating_point && force.pack.operating_point.fmr !== null ? `, measured FMR ${
      force.pack.operating_point.fmr}` : ""}); ${force.decision.k} of ${force.decision.n} frames, margin ${
    force.decision.margin}; liveness ${force.liveness.enabled ? "on" : "off"}; on ${force.pack.providers.join(", ")}`
    : `daemon ${pack.daemon}: configured pack ${pack.configured.pack}`;
  $("#pack").textContent = JSON.stringify(force || pack.configured, null, 2);
  if (!$("#tab-system").hidden) setTimeout(loadSystem, 2000);
}

async function showMetrics() {
  const pre = $("#metrics");
  try { pre.textContent = await api("/metrics"); } catch (err) { pre.textContent = err.message; }
  pre.hidden = false;
}

// ------------------------------------------------------------------------------------------------------ wiring
$("#login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = $("#token").value.trim();
  sessionStorage.setItem("facegate-token", state.token);
  signIn();
});
$("#logout").addEventListener("click", () => signOut());
for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));
$("#enrol-form").addEventListener("submit", enrol);
$("#camera-open").addEventListener("click", openCamera);
$("#camera-close").addEventListener("click", closeCamera);
$("#camera-shoot").addEventListener("click", shoot);
$("#filter").addEventListener("submit", (event) => { event.preventDefault(); loadDecisions(true); follow(); });
$("#older").addEventListener("click", () => loadDecisions(false));
$("#metrics-show").addEventListener("click", showMetrics);
if (state.token) signIn();
