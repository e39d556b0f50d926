// The review page. Memory text is untrusted: everything is rendered with text nodes
// (el() below never parses HTML), and the page's CSP allows no inline script.
"use strict";

const state = { key: null, overview: null };

function takeKey() {
  const m = /^#key=([A-Za-z0-9_\-.~%]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem("alma-key", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + "#/browse");
  }
  state.key = sessionStorage.getItem("alma-key");
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else if (name === "style") Object.assign(node.style, value);  // CSSOM: the CSP refuses style attributes
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function status(text, kind) {
  const box = document.getElementById("status");
  box.className = kind || "";
  box.textContent = text || "";
}

async function call(path, body) {
  const init = { headers: { "X-Alma-Key": state.key || "" } };
  if (body !== undefined) {
    init.method = "POST";
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function params() {
  const [, query] = location.hash.split("?");
  return new URLSearchParams(query || "");
}

function go(path, query) {
  const q = new URLSearchParams(query || {});
  location.hash = path + (q.toString() ? "?" + q.toString() : "");
}

function fmt(value, digits) {
  if (value === null || value === undefined) return "";
  return typeof value === "number" ? value.toFixed(digits === undefined ? 2 : digits) : String(value);
}

function when(iso) { return iso ? iso.replace("T", " ").slice(0, 19) : ""; }

function memoryLink(id, text) { return el("a", { href: "#/memory/" + encodeURIComponent(id), class: "memory-link" }, text || id); }

function select(name, options, current, label) {
  return el("label", {}, label || name,
    el("select", { name, id: "f-" + name }, options.map(o => el("option", { value: o, selected: o === current }, o || "(any)"))));
}

function input(name, value, label, attrs) {
  return el("label", {}, label || name, el("input", Object.assign({ name, id: "f-" + name, value: value || "" }, attrs || {})));
}

function meter(value, floor) {
  const v = Math.max(0, Math.min(1, value || 0));
  return el("span", { class: "meter", title: fmt(value, 3) },
    el("span", { style: { width: `${(v * 100).toFixed(1)}%` } }),
    floor === undefined ? null : el("i", { style: { left: `${(Math.min(1, floor) * 100).toFixed(1)}%` }, title: "floor " + floor }));
}

// -- views ------------------------------------------------------------------------------
async function browse(view) {
  const p = params();
  const agents = state.overview.agents;
  const agent = p.get("agent") || agents[0] || "";
  const type = p.get("type") || "heuristic";
  const archived = p.get("archived") === "1";
  const form = el("form", { class: "bar", id: "browse-form" },
    select("agent", agents, agent), select("type", state.overview.types, type),
    el("label", {}, "archived too", el("input", { type: "checkbox", name: "archived", id: "f-archived", checked: archived })),
    el("button", { type: "submit" }, "Show"));
  form.addEventListener("submit", e => {
    e.preventDefault();
    go("#/browse", { agent: form.elements.agent.value, type: form.elements.type.value, archived: form.elements.archived.checked ? "1" : "0" });
  });
  const counts = state.overview.counts[agent] || {};
  view.append(el("h2", {}, "Memories"), form,
    el("p", { class: "muted" }, `${agent}: ` + Object.entries(counts).map(([k, v]) => `${v} ${k}`).join(", ")));
  if (!agent) { view.append(el("p", {}, "No agents have memories yet.")); return; }
  const shown = 500;  // the API's default limit: the newest first
  const rows = await call(`/api/memories?agent=${encodeURIComponent(agent)}&type=${encodeURIComponent(type)}&archived=${archived ? 1 : 0}`);
  if (!rows.length) { view.append(el("p", { id: "empty" }, "No memories of this type.")); return; }
  view.append(el("table", { id: "memories" },
    el("thead", {}, el("tr", {}, ["memory", "task type", "confidence", "helpful", "harmful", "updated"].map(h => el("th", {}, h)))),
    el("tbody", {}, rows.map(m => el("tr", { "data-id": m.id },
      el("td", {}, memoryLink(m.id, m.title), " ", m.archived ? el("span", { class: "tag archived", title: m.archived_reason || "" }, "archived") : null,
        m.agent !== agent ? el("span", { class: "tag" }, "from " + m.agent) : null),
      el("td", {}, m.task_type || ""),
      el("td", { class: "num" }, fmt(m.confidence)),
      el("td", { class: "num" }, m.helpful), el("td", { class: "num" }, m.harmful),
      el("td", { class: "muted" }, when(m.updated_at)))))));
  if (rows.length >= shown) view.append(el("p", { class: "muted", id: "more" }, `The ${shown} most recent are shown; search finds the others.`));
}

function fieldsTable(memory) {
  const skip = new Set(["supporting_outcomes"]);
  return el("table", { class: "fields", id: "fields" }, el("tbody", {},
    Object.entries(memory).filter(([k]) => !skip.has(k)).map(([k, v]) =>
      el("tr", {}, el("th", {}, k), el("td", { "data-field": k }, v === null ? "—" : typeof v === "object" ? JSON.stringify(v) : String(v))))));
}

function chart(points) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("viewBox", "0 0 400 140");
  svg.setAttribute("preserveAspectRatio", "none");
  if (!points.length) return svg;
  const times = points.map(p => Date.parse(p.at));
  const t0 = Math.min(...times), t1 = Math.max(...times);
  const x = t => 20 + (t1 > t0 ? (t - t0) / (t1 - t0) : 0.5) * 360;
  const y = v => 130 - v * 120;
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.map((p, i) => `${x(times[i]).toFixed(1)},${y(p.value).toFixed(1)}`).join(" "));
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", "#2457a6");
  line.setAttribute("stroke-width", "2");
  svg.append(line);
  points.forEach((p, i) => {
    const dot = document.createElementNS(ns, "circle");
    dot.setAttribute("cx", x(times[i]).toFixed(1)); dot.setAttribute("cy", y(p.value).toFixed(1)); dot.setAttribute("r", "3.5");
    dot.setAttribute("fill", "#2457a6");
    const title = document.createElementNS(ns, "title");
    title.textContent = `${when(p.at)}  ${fmt(p.value, 3)}  ${p.source}`;
    dot.append(title);
    svg.append(dot);
  });
  return svg;
}

async function memoryView(view, id) {
  const page = await call("/api/memory/" + encodeURIComponent(id));
  const m = page.memory;
  const left = el("div", {});
  const right = el("div", {});
  view.append(el("h2", { id: "memory-title" }, page.title, " ",
    el("span", { class: "tag" }, m.type), " ", m.archived ? el("span", { class: "tag archived" }, "archived") : null),
    el("div", { class: "grid" }, left, right));
  left.append(el("div", { class: "card" }, fieldsTable(m)));
  left.append(el("h3", {}, "Learned from"),
    page.provenance.length
      ? el("table", { id: "provenance" }, el("tbody", {}, page.provenance.map(o => el("tr", {},
          el("td", {}, el("span", { class: "tag" }, o.outcome)), el("td", {}, memoryLink(o.id, o.title)), el("td", { class: "muted" }, when(o.created_at))))))
      : el("p", { class: "muted" }, m.type === "heuristic" || m.type === "anti_pattern" ? "Taught directly, not learned from outcomes." : "Not a learned lesson."));
  left.append(el("h3", {}, "Confidence over time"), chart(page.confidence),
    el("table", { id: "confidence" }, el("tbody", {}, page.confidence.map(p =>
      el("tr", {}, el("td", { class: "muted" }, when(p.at)), el("td", { class: "num" }, fmt(p.value, 3)), el("td", {}, p.source))))));
  left.append(el("h3", {}, "History (audit log)"),
    page.audit.length ? auditTable(page.audit) : el("p", { class: "muted" }, "No audit entries for this memory."));

  // corrections
  const done = async (promise, message) => {
    try { await promise; status(message, "ok"); await route(); }
    catch (err) { status(err.message, "error"); }
  };
  if (page.editable.length && !m.archived) {
    const form = el("form", { id: "edit-form" }, el("h3", {}, "Edit wording"),
      page.editable.map(f => el("label", {}, f, el("textarea", { name: f, id: "edit-" + f }, m[f] || ""))),
      el("label", {}, "reason", el("input", { name: "reason", id: "edit-reason", value: "corrected on the review page" })),
      el("button", { type: "submit", id: "edit-save" }, "Save"));
    form.addEventListener("submit", e => {
      e.preventDefault();
      const changes = {};
      for (const f of page.editable) {
        const v = form.elements[f].value;
        if (v !== (m[f] || "")) changes[f] = v === "" ? null : v;
      }
      done(call(`/api/memory/${encodeURIComponent(id)}/edit`, { changes, reason: form.elements.reason.value }), "saved");
    });
    right.append(el("div", { class: "card" }, form));
  }
  if (m.type !== "outcome") {
    const wrong = el("form", { id: "wrong-form" }, el("h3", {}, "Mark as wrong"),
      el("p", { class: "muted" }, `Harmful feedback (confidence −0.10). helpful ${m.helpful}, harmful ${m.harmful}, used ${m.used}, ignored ${m.ignored}.`),
      el("label", {}, "why is it wrong?", el("input", { name: "reason", id: "wrong-reason", required: true })),
      el("button", { type: "submit", class: "danger", id: "wrong-save" }, "Mark wrong"));
    wrong.addEventListener("submit", e => {
      e.preventDefault();
      if (!confirm("Mark this memory wrong? Its confidence drops by 0.10 and the harmful count stays on it.")) return;
      done(call(`/api/memory/${encodeURIComponent(id)}/wrong`, { reason: wrong.elements.reason.value }), "marked wrong");
    });
    right.append(el("div", { class: "card" }, wrong));
  }
  const life = el("div", { class: "card" }, el("h3", {}, m.archived ? "Archived" : "In service"),
    m.archived ? el("p", { class: "muted" }, m.archived_reason || "") : null,
    m.archived
      ? el("button", { id: "restore", onclick: () => done(call(`/api/memory/${encodeURIComponent(id)}/restore`, {}), "restored") }, "Restore")
      : el("button", { id: "archive", class: "secondary", onclick: () => {
          if (confirm("Archive this memory? It leaves retrieval; Restore brings it back.")) done(call(`/api/memory/${encodeURIComponent(id)}/archive`, {}), "archived");
        } }, "Archive"));
  right.append(life);
  if (!m.archived && m.type !== "outcome") {
    const merge = el("form", { id: "merge-form" }, el("h3", {}, "Merge another memory into this one"),
      el("p", { class: "muted" }, "Its counters and provenance join this one; this wording stays; the other is archived. A merge cannot be undone."),
      el("label", {}, "the other memory's id", el("input", { name: "other", id: "merge-other", size: 44 })),
      el("button", { type: "submit", id: "merge-save" }, "Merge"));
    merge.addEventListener("submit", e => {
      e.preventDefault();
      if (!confirm("Merge the other memory into this one? This cannot be undone: restoring the other later leaves its counts here too.")) return;
      done(call("/api/merge", { survivor: id, other: merge.elements.other.value.trim() }), "merged");
    });
    right.append(el("div", { class: "card" }, merge));
  }
}

async function searchView(view) {
  const p = params();
  const agents = state.overview.agents;
  const form = el("form", { id: "search-form" },
    el("div", { class: "bar" }, select("agent", agents, p.get("agent") || agents[0]),
      input("user_id", p.get("user_id"), "user (preferences)"), input("task_type", p.get("task_type"), "task type"),
      input("top_k", p.get("top_k"), "top k", { size: 4 })),
    el("label", {}, "task", el("textarea", { name: "task", id: "f-task" }, p.get("task") || "")),
    el("div", { class: "bar" }, el("button", { type: "submit", id: "search-go" }, "What would be injected?")));
  form.addEventListener("submit", e => {
    e.preventDefault();
    go("#/search", { agent: form.elements.agent.value, task: form.elements.task.value, user_id: form.elements.user_id.value, task_type: form.elements.task_type.value, top_k: form.elements.top_k.value });
  });
  view.append(el("h2", {}, "Search: what alma_retrieve injects, and why"), form);
  if (!p.get("task")) return;
  const r = await call("/api/search", { agent: p.get("agent"), task: p.get("task"), user_id: p.get("user_id"), task_type: p.get("task_type"), top_k: p.get("top_k") });
  const e = r.explanation;
  view.append(el("h3", {}, "Injected prompt"),
    r.prompt ? el("pre", { class: "prompt", id: "prompt" }, r.prompt) : el("p", { id: "prompt", class: "muted" }, "Nothing is relevant enough to inject for this task."),
    el("h3", {}, "Why"),
    el("p", { id: "floors" }, `relevance floor ${e.relevance_floor}, floor margin ${e.floor_margin}, lexical floor ${e.lexical_floor}, preference floor ${e.preference_floor ?? e.relevance_floor}. `,
      e.answered ? "A memory cleared the floor, so the task is answered." : "No memory cleared the floor."),
    el("table", { id: "candidates" },
      el("thead", {}, el("tr", {}, ["memory", "evidence vs floor", "evidence", "similarity", "coverage", "score", "verdict"].map(h => el("th", {}, h)))),
      el("tbody", {}, e.candidates.map(c => el("tr", { "data-id": c.id },
        el("td", {}, c.injected ? el("span", { class: "tag injected" }, "injected") : null, " ", el("span", { class: "tag" }, c.type), " ", memoryLink(c.id, c.text)),
        el("td", {}, meter(c.evidence, e.relevance_floor)),
        el("td", { class: "num" }, fmt(c.evidence, 3)), el("td", { class: "num" }, fmt(c.similarity, 3)),
        el("td", { class: "num" }, fmt(c.coverage, 2)), el("td", { class: "num" }, fmt(c.score, 3)),
        el("td", {}, c.verdict))))));
}

async function learningView(view) {
  const p = params();
  const agents = state.overview.agents;
  const agent = p.get("agent") || agents[0] || "";
  const form = el("form", { class: "bar" }, select("agent", agents, agent), el("button", { type: "submit" }, "Show"));
  form.addEventListener("submit", e => { e.preventDefault(); go("#/learning", { agent: form.elements.agent.value }); });
  view.append(el("h2", {}, "Learning"), form);
  if (!agent) return;
  const d = await call("/api/learning?agent=" + encodeURIComponent(agent));
  view.append(el("p", { id: "lesson-counts" },
    `${d.active.heuristic} heuristics and ${d.active.anti_pattern} anti-patterns in service; ${d.archived.heuristic + d.archived.anti_pattern} retired or archived; ${d.outcomes} outcomes recorded.`));
  const most = Math.max(1, ...d.days.map(x => Math.max(x.formed, x.retired)));
  view.append(el("h3", {}, "Lessons formed and retired, by day"),
    el("table", { id: "learning-days" },
      el("thead", {}, el("tr", {}, ["day", "formed", "retired or archived", "restored", ""].map(h => el("th", {}, h)))),
      el("tbody", {}, d.days.map(x => el("tr", {}, el("td", {}, x.day), el("td", { class: "num" }, x.formed), el("td", { class: "num" }, x.retired),
        el("td", { class: "num" }, x.restored),
        el("td", { class: "bars" }, el("span", { class: "f", style: { width: `${(x.formed / most * 12).toFixed(2)}rem` } }), el("br", {}),
          el("span", { class: "r", style: { width: `${(x.retired / most * 12).toFixed(2)}rem` } })))))));
  view.append(el("h3", {}, "Success rate of outcomes, by task type"),
    el("table", { id: "learning-rates" },
      el("thead", {}, el("tr", {}, ["task type", "outcomes", "success", "partial", "failure", "success rate", ""].map(h => el("th", {}, h)))),
      el("tbody", {}, d.by_task_type.map(r => el("tr", {}, el("td", {}, r.task_type), el("td", { class: "num" }, r.total),
        el("td", { class: "num" }, r.success), el("td", { class: "num" }, r.partial), el("td", { class: "num" }, r.failure),
        el("td", { class: "num" }, fmt(r.success_rate)), el("td", {}, meter(r.success_rate)))))));
}

function auditTable(entries) {
  return el("table", { id: "audit" },
    el("thead", {}, el("tr", {}, ["when", "action", "call", "memory", "agent", "reason", "details"].map(h => el("th", {}, h)))),
    el("tbody", {}, entries.map(a => el("tr", {},
      el("td", { class: "muted" }, when(a.at)), el("td", {}, el("span", { class: "tag" }, a.action)), el("td", {}, a.call),
      el("td", {}, a.memory_id ? memoryLink(a.memory_id, a.title || a.memory_id) : ""), el("td", {}, a.agent || ""),
      el("td", {}, a.reason), el("td", { class: "muted" }, Object.keys(a.details || {}).length ? JSON.stringify(a.details) : "")))));
}

async function auditView(view) {
  const p = params();
  const actions = ["", "archive", "purge", "merge", "restore", "edit", "feedback", "import", "reindex"];
  const form = el("form", { class: "bar", id: "audit-form" }, select("action", actions, p.get("action") || ""),
    select("agent", [""].concat(state.overview.agents), p.get("agent") || ""), input("memory_id", p.get("memory_id"), "memory id", { size: 44 }),
    input("limit", p.get("limit") || "200", "limit", { size: 5 }), el("button", { type: "submit" }, "Filter"));
  form.addEventListener("submit", e => {
    e.preventDefault();
    go("#/audit", { action: form.elements.action.value, agent: form.elements.agent.value, memory_id: form.elements.memory_id.value.trim(), limit: form.elements.limit.value });
  });
  view.append(el("h2", {}, "Audit log"), form);
  const q = new URLSearchParams();
  for (const k of ["action", "agent", "memory_id", "limit"]) if (p.get(k)) q.set(k, p.get(k));
  const entries = await call("/api/audit?" + q.toString());
  view.append(entries.length ? auditTable(entries) : el("p", { class: "muted", id: "empty" }, "No entries match."));
}

// -- routing ----------------------------------------------------------------------------
async function route() {
  const view = document.getElementById("view");
  const path = location.hash.split("?")[0] || "#/browse";
  for (const a of document.querySelectorAll("header nav a")) a.classList.toggle("active", path.startsWith(a.getAttribute("href")));
  const fresh = el("main", { id: "view" });
  try {
    if (!state.key) throw new Error("No key: open the URL that alma-mcp ui printed (it ends in #key=…).");
    state.overview = await call("/api/overview");
    document.getElementById("project").textContent = `${state.overview.project} · ${state.overview.storage}`;
    if (path.startsWith("#/memory/")) await memoryView(fresh, decodeURIComponent(path.slice("#/memory/".length)));
    else if (path === "#/search") await searchView(fresh);
    else if (path === "#/learning") await learningView(fresh);
    else if (path === "#/audit") await auditView(fresh);
    else await browse(fresh);
  } catch (err) {
    fresh.append(el("p", { class: "error", id: "error" }, err.message));
  }
  view.replaceWith(fresh);
  document.body.dataset.ready = path;
}

window.addEventListener("hashchange", () => { status(""); route(); });
takeKey();
route();
