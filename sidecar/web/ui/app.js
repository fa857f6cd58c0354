// The sidecar's dashboard: plain DOM and hand-drawn SVG, no library, no build step.
// It reads only the sidecar's JSON routes with the master key from this tab's session storage.
"use strict";

const KEY = "mistral-sidecar.master";
const COLORS = ["#fa520f", "#2e90fa", "#12b76a", "#7a5af8", "#f79009", "#ee46bc", "#15b79e", "#667085"];
const $ = (sel) => document.querySelector(sel);

// -- DOM helpers: text only (textContent), so nothing from the API is ever parsed as HTML ----------------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "on") for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
    else if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

const usd = (v) => (v === null || v === undefined ? "—" : v === 0 ? "$0" : "$" + Number(v).toFixed(Math.abs(v) >= 1 ? 2 : 6));
const tick = (v) => (v === 0 ? "$0" : "$" + (v >= 1 ? v.toFixed(2) : Number(v.toPrecision(2))));
const num = (v) => (v === null || v === undefined ? "—" : Number(v).toLocaleString("en-US"));

function table(columns, rows, empty) {
  if (!rows.length) return el("p", { class: "muted" }, empty || "Nothing yet.");
  return el("table", {},
    el("thead", {}, el("tr", {}, columns.map((c) => el("th", { class: c.num ? "num" : null }, c.title)))),
    el("tbody", {}, rows.map((row) => el("tr", { "data-row": row.request_id || row.token || row.model || null },
      columns.map((c) => el("td", { class: c.num ? "num" : null }, c.cell(row)))))));
}

// -- the API: Bearer header from session storage; 401 sends the person back to sign-in -----------------
async function api(path, options = {}) {
  const key = sessionStorage.getItem(KEY);
  const headers = { Authorization: "Bearer " + key };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method: options.method || "GET", headers, credentials: "omit",
    cache: "no-store", body: options.body !== undefined ? JSON.stringify(options.body) : undefined });
  const data = await response.json().catch(() => ({}));
  if (response.status === 401 && !options.quiet) signOut("Your session's key was refused; sign in again.");
  if (!response.ok) throw new Error(data.message || data.detail || `HTTP ${response.status}`);
  return data;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) q.set(k, v);
  const text = q.toString();
  return text ? "?" + text : "";
}

// -- sign-in -------------------------------------------------------------------------------------------
function signOut(message) {
  sessionStorage.removeItem(KEY);
  $("#nav").hidden = true;
  $("#view").replaceChildren();
  $("#sign-in").hidden = false;
  $("#sign-in-error").textContent = message || "";
}

async function signIn(event) {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("#master-key").value.trim());
  $("#master-key").value = "";
  try {
    await api("/key/list?size=1", { quiet: true });
  } catch (error) {
    signOut("Sign-in refused: " + error.message);
    return;
  }
  if (!location.hash || location.hash === "#/") location.hash = "#/spend";
  route();
}

// -- views ---------------------------------------------------------------------------------------------
function days(n) {
  const out = [];
  const today = new Date();
  for (let i = n - 1; i >= 0; i--) {
    const d = new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), today.getUTCDate() - i));
    out.push(d.toISOString().slice(0, 10));
  }
  return out;
}

function stackedChart(groups, dayList) {
  groups = groups.filter((g) => g.cost > 0);  // the sidecar's own routes cost nothing: no bar, no legend
  const models = [...new Set(groups.map((g) => g.model || "(none)"))];
  const byDay = {};
  for (const g of groups) (byDay[g.day] ||= {})[g.model || "(none)"] = g.cost;
  const totals = dayList.map((d) => Object.values(byDay[d] || {}).reduce((a, b) => a + b, 0));
  const max = Math.max(...totals, 0) || 1;
  const W = 760, H = 240, left = 70, bottom = 24, top = 10;
  const bw = (W - left) / dayList.length;
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img", id: "spend-chart",
    "aria-label": "Cost by day, stacked by model" });
  for (let i = 0; i <= 4; i++) {
    const y = top + (H - top - bottom) * (1 - i / 4);
    chart.append(svg("line", { x1: left, x2: W, y1: y, y2: y, stroke: "#e4e7ec" }));
    chart.append(svg("text", { x: left - 6, y: y + 4, "text-anchor": "end" }, tick(max * i / 4)));
  }
  dayList.forEach((day, i) => {
    let y = H - bottom;
    models.forEach((model, m) => {
      const cost = (byDay[day] || {})[model] || 0;
      if (!cost) return;
      const h = (H - top - bottom) * cost / max;
      y -= h;
      chart.append(svg("rect", { x: left + i * bw + 3, y, width: Math.max(bw - 6, 1), height: Math.max(h, 1),
        fill: COLORS[m % COLORS.length], "data-day": day, "data-model": model, "data-cost": cost },
        svg("title", {}, `${day} ${model}: ${usd(cost)}`)));
    });
    if (dayList.length <= 16 || i % 2 === 0)
      chart.append(svg("text", { x: left + i * bw + bw / 2, y: H - 6, "text-anchor": "middle" }, day.slice(5)));
  });
  const legend = el("div", { class: "legend" }, models.map((model, m) =>
    el("span", {}, el("i", { class: "swatch-" + (m % COLORS.length) }), model)));
  return el("div", {}, chart, legend);
}

async function spendView() {
  const span = 14;
  const dayList = days(span);
  const start = dayList[0];
  const [byDay, byKey, byUser] = await Promise.all([
    api("/spend/report" + query({ group_by: "day_model", start })),
    api("/spend/report" + query({ group_by: "key", start })),
    api("/spend/report" + query({ group_by: "end_user", start })),
  ]);
  return el("div", {},
    el("h2", {}, "Spend"),
    el("div", { class: "card" },
      el("h3", {}, `Cost by day, last ${span} days, by model`),
      el("p", { class: "muted", id: "spend-total" },
        `${usd(byDay.total_cost)} over ${num(byDay.total_requests)} requests`),
      stackedChart(byDay.groups, dayList)),
    el("div", { class: "grid" },
      el("div", { class: "card", id: "top-keys" }, el("h3", {}, "Top keys"), table([
        { title: "Key", cell: (r) => r.key_hash ? el("a", { href: "#/key/" + r.key_hash }, r.key_alias || r.key_hash.slice(0, 12)) : `(${r.key_alias || "no key"})` },
        { title: "Requests", num: true, cell: (r) => num(r.requests) },
        { title: "Cost", num: true, cell: (r) => usd(r.cost) },
      ], byKey.groups.slice(0, 10))),
      el("div", { class: "card", id: "top-users" }, el("h3", {}, "Top end users"), table([
        { title: "End user", cell: (r) => r.end_user || "(none)" },
        { title: "Requests", num: true, cell: (r) => num(r.requests) },
        { title: "Cost", num: true, cell: (r) => usd(r.cost) },
      ], byUser.groups.slice(0, 10)))));
}

const LIMIT_FIELDS = [["max_budget", "Budget $", "number"], ["budget_duration", "Period (30d)", "text"],
  ["rpm_limit", "RPM", "number"], ["tpm_limit", "TPM", "number"], ["max_parallel_requests", "Parallel", "number"]];

function limitInputs(current) {
  return LIMIT_FIELDS.map(([name, label, type]) => el("label", {}, label,
    el("input", { name, type, step: type === "number" ? "any" : null, size: 8,
      value: current && current[name] !== null && current[name] !== undefined ? current[name] : null })));
}

function readLimits(form, keepEmpty) {
  const out = {};
  for (const [name, , type] of LIMIT_FIELDS) {
    const raw = form.elements[name].value.trim();
    if (raw === "") { if (keepEmpty) out[name] = null; continue; }
    out[name] = type === "number" ? (name === "max_budget" ? parseFloat(raw) : parseInt(raw, 10)) : raw;
  }
  const models = form.elements.models.value.split(",").map((m) => m.trim()).filter(Boolean);
  out.models = models;
  return out;
}

function showSecret(container, answer, what) {
  container.replaceChildren(el("div", { class: "card" },
    el("p", {}, `${what} — copy it now, it is shown only once:`),
    el("div", { class: "secret", id: "new-key" }, answer.key),
    el("button", { type: "button", on: { click: () => container.replaceChildren() } }, "Done")));
}

async function keysView() {
  const list = await api("/key/list?return_full_object=true&size=1000");
  const secret = el("div", { id: "secret" });
  const message = el("p", { class: "error", role: "alert" });
  const form = el("form", { class: "inline", id: "create-key" },
    el("label", {}, "Alias", el("input", { name: "key_alias", required: true, size: 16 })),
    el("label", {}, "Models (comma-separated, empty: all)", el("input", { name: "models", size: 24 })),
    limitInputs(null),
    el("button", { class: "primary", type: "submit" }, "Create key"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const answer = await api("/key/generate", { method: "POST",
        body: { key_alias: form.elements.key_alias.value.trim(), ...readLimits(form, false) } });
      await route();
      showSecret($("#secret"), answer, `Key "${answer.key_alias}" created`);
    } catch (error) { message.textContent = error.message; }
  });
  const act = (label, cls, fn) => el("button", { type: "button", class: cls, on: { click: async () => {
    try { await fn(); } catch (error) { message.textContent = error.message; }
  } } }, label);
  return el("div", {},
    el("h2", {}, "Keys"),
    secret,
    el("div", { class: "card" }, el("h3", {}, "New key"), form, message),
    el("div", { class: "card", id: "key-list" }, table([
      { title: "Alias", cell: (k) => el("a", { href: "#/key/" + k.token }, k.key_alias || k.token.slice(0, 12)) },
      { title: "Key", cell: (k) => [k.key_name, k.blocked ? el("span", { class: "tag blocked" }, "blocked") : null] },
      { title: "Models", cell: (k) => k.models.length ? k.models.join(", ") : "all" },
      { title: "Spend / budget", num: true, cell: (k) => `${usd(k.spend)} / ${k.max_budget === null ? "∞" : usd(k.max_budget)}` },
      { title: "RPM", num: true, cell: (k) => num(k.rpm_limit) },
      { title: "", cell: (k) => [
        act(k.blocked ? "Unblock" : "Block", null, async () => {
          await api("/key/update", { method: "POST", body: { key: k.token, blocked: !k.blocked } }); await route();
        }),
        " ",
        act("Regenerate", null, async () => {
          if (!confirm(`Regenerate "${k.key_alias || k.key_name}"? The old secret stops working.`)) return;
          const answer = await api("/key/regenerate", { method: "POST", body: { key: k.token } });
          await route();
          showSecret($("#secret"), answer, `New secret for "${answer.key_alias || answer.key_name}"`);
        }),
        " ",
        act("Revoke", "danger", async () => {
          if (!confirm(`Revoke "${k.key_alias || k.key_name}"? Requests with it get 401 at once.`)) return;
          await api("/key/delete", { method: "POST", body: { keys: [k.token] } }); await route();
        }),
      ] },
    ], list.keys, "No keys yet: create one above.")));
}

function useBar(used, limit, format = num) {
  if (limit === null || limit === undefined) return el("span", { class: "muted" }, "no limit");
  const bar = el("span", {});
  bar.style.width = Math.min(100, limit ? 100 * (used || 0) / limit : 0).toFixed(1) + "%";
  return [el("span", { class: "bar" }, bar), ` ${format(used || 0)} of ${format(limit)}`];
}

async function keyView(token) {
  const [answer, logs] = await Promise.all([api("/key/info" + query({ key: token })),
    api("/spend/logs" + query({ key_hash: token, proxied: true, page_size: 20 }))]);
  const k = answer.info, state = answer.limits_state || {};
  const message = el("p", { class: "error", role: "alert" });
  const form = el("form", { class: "inline", id: "update-key" },
    el("label", {}, "Models", el("input", { name: "models", size: 24, value: k.models.join(", ") })),
    limitInputs(k), el("button", { class: "primary", type: "submit" }, "Save"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api("/key/update", { method: "POST", body: { key: token, ...readLimits(form, true) } });
      await route();
    } catch (error) { message.textContent = error.message; }
  });
  return el("div", {},
    el("h2", {}, "Key ", k.key_alias || k.key_name, k.blocked ? el("span", { class: "tag blocked" }, "blocked") : null),
    el("div", { class: "card", id: "key-state" },
      el("p", {}, "Budget: ", useBar(k.spend, k.max_budget, usd),
        k.budget_duration ? el("span", { class: "muted" }, ` per ${k.budget_duration}, resets ${k.budget_reset_at || "—"}`) : null),
      el("p", {}, "Requests this minute: ", useBar(state.rpm ? state.rpm.used : null, k.rpm_limit)),
      el("p", {}, "Tokens this minute: ", useBar(state.tpm ? state.tpm.used : null, k.tpm_limit)),
      el("p", {}, "Parallel requests: ", k.max_parallel_requests === null ? el("span", { class: "muted" }, "no limit") : num(k.max_parallel_requests)),
      el("p", { class: "muted" }, `${k.key_name} · token ${k.token} · expires ${k.expires || "never"}`)),
    el("div", { class: "card" }, el("h3", {}, "Limits"), form, message),
    el("div", { class: "card" }, el("h3", {}, "Recent requests"), logTable(logs.logs)));
}

function logTable(logs) {
  return table([
    { title: "Time", cell: (r) => r.time.replace("T", " ").slice(0, 19) },
    { title: "Key", cell: (r) => r.key_alias || (r.key_hash ? r.key_hash.slice(0, 12) : "—") },
    { title: "End user", cell: (r) => r.end_user || "—" },
    { title: "Operation", cell: (r) => [r.operation, r.streamed ? el("span", { class: "tag", title: "streamed" }, "stream") : null] },
    { title: "Model", cell: (r) => r.model || "—" },
    { title: "Status", num: true, cell: (r) => r.status },
    { title: "Usage", num: true, cell: (r) => r.pages ? `${num(r.pages)} pages` : r.audio_seconds ? `${num(r.audio_seconds)} s`
      : r.characters ? `${num(r.characters)} chars` : r.prompt_tokens === null ? "—"
      : `${num(r.prompt_tokens)} + ${num(r.completion_tokens)} tok` },
    { title: "Cost", num: true, cell: (r) => [usd(r.cost), r.estimated ? el("span", { class: "tag est", title: "estimated (the stream was cut before its usage)" }, "est.") : null] },
    { title: "ms", num: true, cell: (r) => num(Math.round(r.latency_ms)) },
  ], logs, "No requests match.");
}

async function requestsView(params) {
  const fields = ["key_alias", "end_user", "model", "operation", "start", "end"];
  const logs = await api("/spend/logs" + query({ ...params, proxied: true, page_size: 100 }));
  const form = el("form", { class: "inline", id: "filters" },
    fields.map((name) => el("label", {}, name.replace("_", " "),
      el("input", { name, size: 14, value: params[name] || null, placeholder: name === "start" || name === "end" ? "2026-01-31" : null }))),
    el("button", { type: "submit" }, "Filter"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const chosen = {};
    for (const name of fields) if (form.elements[name].value.trim()) chosen[name] = form.elements[name].value.trim();
    location.hash = "#/requests" + query(chosen);
  });
  return el("div", {}, el("h2", {}, "Recent requests"),
    el("div", { class: "card" }, form,
      el("p", { class: "muted" }, `${num(logs.total_count)} requests to Mistral (the sidecar's own routes are left out)`)),
    el("div", { class: "card", id: "request-list" }, logTable(logs.logs)));
}

async function pricesView() {
  const prices = await api("/spend/prices");
  const cell = (name) => (r) => (r[name] === undefined ? "—" : "$" + r[name]);
  return el("div", {}, el("h2", {}, "Prices in effect"),
    el("p", { class: "muted" }, `As of ${prices.as_of || "—"} · batch discount ${Math.round(prices.batch_discount * 100)}% · ${prices.source || ""}`),
    el("div", { class: "card", id: "price-list" }, table([
      { title: "Model", cell: (r) => [r.model, r.aliases.length ? el("div", { class: "muted" }, r.aliases.join(", ")) : null] },
      { title: "Input /Mtok", num: true, cell: cell("input_per_mtok") },
      { title: "Output /Mtok", num: true, cell: cell("output_per_mtok") },
      { title: "Cached /Mtok", num: true, cell: cell("cached_input_per_mtok") },
      { title: "OCR /1k pages", num: true, cell: cell("ocr_per_kpage") },
      { title: "Audio /min", num: true, cell: cell("audio_per_minute") },
      { title: "TTS /Mchar", num: true, cell: cell("tts_per_mchar") },
    ], prices.models)));
}

// -- routing -------------------------------------------------------------------------------------------
async function route() {
  if (!sessionStorage.getItem(KEY)) { signOut(); return; }
  $("#sign-in").hidden = true;
  $("#nav").hidden = false;
  const [path, search] = (location.hash.slice(1) || "/spend").split("?");
  const params = Object.fromEntries(new URLSearchParams(search || ""));
  const [, name, arg] = path.split("/");
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("active", link.dataset.view === name);
  const views = { spend: spendView, keys: keysView, key: () => keyView(arg), requests: () => requestsView(params),
    prices: pricesView };
  const view = $("#view");
  try {
    view.replaceChildren(await (views[name] || spendView)());
    view.dataset.ready = name;
  } catch (error) {
    view.replaceChildren(el("p", { class: "error", role: "alert" }, error.message));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#sign-in-form").addEventListener("submit", signIn);
  $("#sign-out").addEventListener("click", () => signOut("Signed out."));
  window.addEventListener("hashchange", route);
  route();
});
