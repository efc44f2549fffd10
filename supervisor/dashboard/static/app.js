// bot-supervisor dashboard: plain JavaScript, no build step. Data comes from /events (Server-Sent Events)
// and the JSON API; every command carries the CSRF token from /api/session. Text is set with textContent only.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const TAIL_LINES = 40;
const STREAM_MAX = 300;
const REPLIES_MAX = 30;

const ui = {
  csrf: null,
  loginRequired: false,
  events: null,
  snapshot: null,
  rows: new Map(),
  pending: new Set(),
  lastReply: new Map(),
  detail: null, // {host, instance, target, history: [[ts, pnl]], timer}
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

// --- formatting ------------------------------------------------------------------------------

function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d${String(Math.floor((s % 86400) / 3600)).padStart(2, "0")}h`;
}

function fmtAge(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  return seconds < 10 ? `${seconds.toFixed(1)}s` : fmtDuration(seconds);
}

function fmtBytes(value) {
  if (value === null || value === undefined) return "–";
  let size = value;
  for (const unit of ["B", "K", "M", "G"]) {
    if (size < 1024 || unit === "G") return unit === "B" || unit === "K" ? `${size.toFixed(0)}${unit}` : `${size.toFixed(1)}${unit}`;
    size /= 1024;
  }
  return `${size.toFixed(1)}G`;
}

function fmtPnl(value) {
  if (value === null || value === undefined) return "–";
  const sign = value > 0 ? "+" : "";
  return `${sign}${value.toFixed(Math.abs(value) >= 100 ? 0 : 2)}`;
}

function fmtTime(ts) {
  return new Date(ts * 1000).toLocaleTimeString([], { hour12: false });
}

// --- API -----------------------------------------------------------------------------------------

async function api(path, body) {
  const options = { credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    options.method = "POST";
    options.headers["Content-Type"] = "application/json";
    if (ui.csrf) options.headers["X-CSRF-Token"] = ui.csrf;
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = { error: `HTTP ${response.status}` };
  }
  return { status: response.status, data };
}

async function boot() {
  const { status, data } = await api("/api/session");
  if (status !== 200) {
    $("live-text").textContent = data.error || `HTTP ${status}`;
    return;
  }
  ui.loginRequired = data.login_required;
  $("logout").hidden = !data.login_required;
  if (!data.authenticated) {
    showLogin();
    return;
  }
  ui.csrf = data.csrf;
  showApp();
}

function showLogin(message) {
  if (ui.events) ui.events.close();
  ui.events = null;
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("live-text").textContent = "logged out";
  $("live").className = "dot";
  $("password").focus();
}

function showApp() {
  $("login").hidden = true;
  $("app").hidden = false;
  connect();
}

async function login(event) {
  event.preventDefault();
  const button = $("login-button");
  button.disabled = true;
  $("login-error").textContent = "";
  try {
    const { status, data } = await api("/api/login", { password: $("password").value });
    if (status === 200) {
      ui.csrf = data.csrf;
      $("password").value = "";
      showApp();
    } else {
      $("login-error").textContent = status === 401 ? "Wrong password." : data.error || `HTTP ${status}`;
      $("password").select();
    }
  } finally {
    button.disabled = false;
  }
}

async function logout() {
  await api("/api/logout", {});
  ui.csrf = null;
  closeDetail();
  showLogin();
}

// --- live updates ----------------------------------------------------------------------------------

function connect() {
  if (ui.events) ui.events.close();
  const source = new EventSource("/events");
  ui.events = source;
  source.addEventListener("open", () => setLive(true));
  source.addEventListener("error", async () => {
    setLive(false);
    if (source.readyState === EventSource.CLOSED) {
      const { data } = await api("/api/session");
      if (ui.loginRequired && data && !data.authenticated) showLogin("Your session ended. Log in again.");
      else setTimeout(connect, 2000);
    }
  });
  source.addEventListener("snapshot", (event) => render(JSON.parse(event.data)));
  source.addEventListener("message", (event) => onMessage(JSON.parse(event.data)));
  source.addEventListener("performance", (event) => onPerformance(JSON.parse(event.data)));
}

function setLive(on) {
  $("live").className = on ? "dot on" : "dot";
  $("live-text").textContent = on ? "live" : "reconnecting…";
}

// --- the table --------------------------------------------------------------------------------------

const VERBS = ["start", "stop", "restart", "import", "config"];

function render(snapshot) {
  ui.snapshot = snapshot;
  $("broker").textContent = snapshot.connected ? snapshot.broker : `${snapshot.broker} (broker down)`;
  if (!snapshot.connected) $("live").className = "dot warn";
  renderHosts(snapshot.hosts);
  const seen = new Set();
  const body = document.querySelector("#fleet tbody");
  snapshot.instances.forEach((item, index) => {
    seen.add(item.target);
    let row = ui.rows.get(item.target);
    if (!row) {
      row = makeRow(item);
      ui.rows.set(item.target, row);
    }
    if (body.children[index] !== row.tr) body.insertBefore(row.tr, body.children[index] || null);
    updateRow(row, item);
  });
  for (const [target, row] of ui.rows) {
    if (!seen.has(target)) {
      row.tr.remove();
      ui.rows.delete(target);
    }
  }
  $("empty").hidden = snapshot.instances.length > 0;
  renderSummary(snapshot);
  if (ui.detail) {
    const item = snapshot.instances.find((i) => i.target === ui.detail.target);
    const pill = $("detail-state");
    pill.textContent = item ? item.state : "gone";
    pill.className = `pill state-${item ? item.state : "offline"}`;
  }
}

function renderHosts(hosts) {
  const box = $("hosts");
  box.replaceChildren(
    ...hosts.map((h) =>
      el(
        "span",
        {
          class: `chip ${h.online ? "online" : "offline"}${h.trusted === false ? " untrusted" : ""}`,
          title: h.trusted === false
            ? "record not signed with the shared secret: untrusted, never acted on"
            : `agent ${h.version || "?"}${h.signed ? ", signed" : ""}`,
        },
        el("span", { class: "dot small-dot" + (h.online ? " on" : "") }),
        `${h.host} · ${h.instances}` + (h.trusted === false ? " · untrusted" : ""),
      ),
    ),
  );
}

function renderSummary(snapshot) {
  const count = (pred) => snapshot.instances.filter(pred).length;
  const running = count((i) => i.state === "running" && i.health === "ok");
  const bad = count((i) => i.health === "bad");
  const grey = count((i) => i.health === "off");
  const starting = count((i) => (i.state === "starting" || i.state === "waiting-login") && i.health === "ok");
  const stopped = snapshot.instances.length - running - bad - grey - starting;
  $("summary").replaceChildren(
    el("span", { class: "sum ok" }, el("b", {}, String(running)), " running"),
    ...(starting ? [el("span", { class: "sum starting" }, el("b", {}, String(starting)), " starting or at login")] : []),
    el("span", { class: "sum bad" }, el("b", {}, String(bad)), " need attention"),
    el("span", { class: "sum idle" }, el("b", {}, String(stopped)), " stopped"),
    el("span", { class: "sum off" }, el("b", {}, String(grey)), " offline or stale"),
    el("span", { class: "sum muted" }, `${snapshot.hosts.length} host${snapshot.hosts.length === 1 ? "" : "s"}`),
  );
}

function makeRow(item) {
  const cells = {};
  const tr = el("tr", { "data-target": item.target });
  for (const name of ["host", "instance", "state", "hb", "pid", "cpu", "rss", "uptime", "restarts", "commit", "pnl", "actions"]) {
    cells[name] = el("td", { class: name });
    tr.append(cells[name]);
  }
  cells.instance.append(el("span", { class: "name" }), el("span", { class: "recipe muted" }));
  cells.state.append(el("span", { class: "pill" }), el("div", { class: "alert" }));
  cells.pnl.append(spark(), el("span", { class: "pnl-value" }));
  const buttons = {};
  const bar = el("div", { class: "buttons" });
  for (const verb of VERBS) {
    buttons[verb] = el("button", { type: "button", class: `verb verb-${verb}`, textContent: verb, "data-verb": verb });
    buttons[verb].addEventListener("click", () => ask(item.target, verb));
    bar.append(buttons[verb]);
  }
  const consoleButton = el("button", { type: "button", class: "verb verb-console", textContent: "console", "data-verb": "console" });
  consoleButton.addEventListener("click", () => openDetail(item.target));
  bar.append(consoleButton);
  cells.actions.append(bar, el("div", { class: "reply muted" }));
  return { tr, cells, buttons };
}

const STATE_HINTS = {
  starting: "process up, ready line not seen yet",
  "waiting-login": "waiting at its login dialog: log in with 'supervisor attach'",
};

function updateRow(row, item) {
  const { tr, cells, buttons } = row;
  tr.className = `health-${item.health}${ui.detail && ui.detail.target === item.target ? " selected" : ""}`;
  tr.dataset.state = item.state;
  cells.host.textContent = item.host;
  cells.instance.querySelector(".name").textContent = item.instance;
  cells.instance.querySelector(".recipe").textContent = item.recipe ? `${item.recipe}${item.plugin ? " · plugin" : ""}` : "";
  const pill = cells.state.querySelector(".pill");
  pill.textContent = item.state;
  pill.title = STATE_HINTS[item.state] || "";
  pill.className = `pill state-${item.state}`;
  cells.state.querySelector(".alert").textContent = item.alert || "";
  const running = item.state === "running";
  // starting and waiting-login bots have a live process: show its figures too.
  const alive = running || item.state === "starting" || item.state === "waiting-login";
  const late = item.heartbeat_age !== null && item.heartbeat_age > 2.5 * item.heartbeat_interval;
  cells.hb.textContent = fmtAge(item.heartbeat_age);
  cells.hb.className = `hb${late && running ? " late" : ""}`;
  cells.pid.textContent = alive && item.pid ? String(item.pid) : "–";
  cells.cpu.textContent = alive && item.cpu_percent !== null ? `${item.cpu_percent.toFixed(1)}%` : "–";
  cells.rss.textContent = alive ? fmtBytes(item.rss) : "–";
  cells.uptime.textContent = alive ? fmtDuration(item.uptime) : "–";
  cells.restarts.textContent = item.restarts === null || item.restarts === undefined ? "–" : String(item.restarts);
  cells.commit.textContent = item.commit ? item.commit.slice(0, 8) : "–";
  cells.commit.title = item.commit || "";
  drawSpark(cells.pnl.querySelector("svg"), item.pnl_series);
  const value = cells.pnl.querySelector(".pnl-value");
  value.textContent = fmtPnl(item.pnl);
  value.className = `pnl-value ${item.pnl > 0 ? "up" : item.pnl < 0 ? "down" : ""}`;
  for (const verb of VERBS) {
    const busy = ui.pending.has(`${item.target}:${verb}`);
    buttons[verb].disabled = busy || !item.host_online;
    buttons[verb].textContent = busy ? `${verb}…` : verb;
  }
  const reply = ui.lastReply.get(item.target);
  const replyCell = cells.actions.querySelector(".reply");
  replyCell.textContent = reply ? reply.text : "";
  replyCell.className = `reply ${reply ? reply.cls : ""}`;
}

// --- commands ----------------------------------------------------------------------------------------

const PROMPTS = {
  stop: {
    title: "Stop this bot?",
    text: "Stopping runs the bot's stop command, which cancels its open orders, and then ends its process. The agent will not restart it.",
    ok: "Stop it",
  },
  import: { title: "Import a strategy", text: "Strategy (config file) name, as the bot's `import` command takes it:", input: "conf_pure_mm_1.yml", ok: "Import" },
  config: {
    title: "Change configuration",
    text: "KEY=VALUE pairs separated by spaces (empty: show the current configuration):",
    input: "",
    ok: "Send",
  },
};

async function ask(target, verb) {
  const prompt = PROMPTS[verb];
  let data = {};
  if (prompt) {
    const answer = await dialog(prompt);
    if (answer === null) return;
    if (verb === "import") {
      if (!answer.trim()) return;
      data = { strategy: answer.trim() };
    } else if (verb === "config") {
      const params = answer.trim() ? answer.trim().split(/\s+/).map((pair) => pair.split(/=(.*)/s).slice(0, 2)) : [];
      data = { params };
    }
  }
  await command(target, verb, data);
}

function dialog({ title, text, input, ok }) {
  return new Promise((resolve) => {
    const box = $("ask");
    const field = $("ask-input");
    $("ask-title").textContent = title;
    $("ask-text").textContent = text;
    $("ask-ok").textContent = ok;
    field.hidden = input === undefined;
    field.value = "";
    field.placeholder = input || "";
    const done = () => {
      box.removeEventListener("close", done);
      resolve(box.returnValue === "ok" ? field.value : null);
    };
    box.addEventListener("close", done);
    box.returnValue = "";
    box.showModal();
    (input === undefined ? $("ask-ok") : field).focus();
  });
}

async function command(target, verb, data) {
  const key = `${target}:${verb}`;
  ui.pending.add(key);
  if (ui.snapshot) render(ui.snapshot);
  let reply;
  try {
    const { status, data: body } = await api("/api/command", { target, verb, data });
    if (status === 403 && ui.loginRequired) {
      showLogin("Your session ended. Log in again.");
      return null;
    }
    reply = status === 200 ? body : { ok: false, timed_out: false, msg: body.error || `HTTP ${status}`, verb, target };
  } catch (error) {
    reply = { ok: false, timed_out: false, msg: String(error), verb, target };
  } finally {
    ui.pending.delete(key);
  }
  if (verb !== "tail") noteReply(target, verb, reply);
  if (ui.snapshot) render(ui.snapshot);
  return reply;
}

function noteReply(target, verb, reply) {
  const outcome = reply.ok ? "ok" : reply.timed_out ? "TIMEOUT" : `FAILED${reply.status ? ` (${reply.status})` : ""}`;
  const cls = reply.ok ? "ok" : "bad";
  const text = `${verb}: ${outcome}${reply.msg ? ` — ${reply.msg}` : ""}`;
  ui.lastReply.set(target, { text, cls });
  const list = $("replies");
  list.prepend(
    el("li", { class: cls, "data-target": target, "data-verb": verb }, el("time", {}, fmtTime(Date.now() / 1000)), ` ${target} `, el("b", {}, verb), ` ${outcome}${reply.msg ? ` — ${reply.msg}` : ""}`),
  );
  while (list.children.length > REPLIES_MAX) list.lastChild.remove();
}

// --- console, stream and chart of one instance -----------------------------------------------------------

async function openDetail(target) {
  closeDetail();
  const [host, instance] = target.split("/");
  ui.detail = { target, host, instance, points: [], timer: null, busy: false };
  $("detail").hidden = false;
  const box = $("detail").getBoundingClientRect();
  if (box.bottom > window.innerHeight) window.scrollBy({ top: box.bottom - window.innerHeight + 12, behavior: "smooth" });
  $("detail-title").textContent = target;
  $("screen").textContent = "loading…";
  $("send-reply").textContent = "";
  $("stream").replaceChildren();
  if (ui.snapshot) render(ui.snapshot);
  refreshScreen();
  ui.detail.timer = setInterval(refreshScreen, 1000);
  $("send-line").focus();
  const { status, data } = await api(`/api/history/${encodeURIComponent(host)}/${encodeURIComponent(instance)}`);
  if (status !== 200 || !ui.detail || ui.detail.target !== target) return;
  ui.detail.points = data.performance;
  drawChart();
  for (const message of data.messages) addStream(message);
}

function closeDetail() {
  if (ui.detail && ui.detail.timer) clearInterval(ui.detail.timer);
  ui.detail = null;
  $("detail").hidden = true;
  if (ui.snapshot) render(ui.snapshot);
}

async function refreshScreen() {
  const detail = ui.detail;
  if (!detail || detail.busy || document.hidden) return;
  detail.busy = true;
  try {
    const reply = await command(detail.target, "tail", { lines: TAIL_LINES });
    if (ui.detail !== detail || !reply) return;
    const screen = $("screen");
    const atBottom = screen.scrollHeight - screen.scrollTop - screen.clientHeight < 30;
    if (reply.ok) screen.textContent = (reply.result && reply.result.screen) || "";
    else screen.textContent = `(${reply.timed_out ? "timed out" : "no screen"}: ${reply.msg})`;
    screen.classList.toggle("stale", !reply.ok);
    if (atBottom) screen.scrollTop = screen.scrollHeight;
  } finally {
    detail.busy = false;
  }
}

async function sendLine(event) {
  event.preventDefault();
  const detail = ui.detail;
  if (!detail) return;
  const field = $("send-line");
  const text = field.value;
  field.value = "";
  const reply = await command(detail.target, "send", { text });
  if (!reply) return;
  $("send-reply").textContent = reply.ok ? `sent: ${text}` : `not sent: ${reply.msg}`;
  $("send-reply").className = `small ${reply.ok ? "muted" : "error"}`;
  setTimeout(refreshScreen, 300);
}

function onMessage(message) {
  const detail = ui.detail;
  if (!detail || message.instance !== detail.instance) return;
  if (message.host && message.host !== detail.host) return;
  addStream(message);
}

function addStream(message) {
  const list = $("stream");
  const item = el(
    "li",
    { class: `kind-${message.kind}${message.level ? ` level-${String(message.level).toLowerCase()}` : ""}` },
    el("time", {}, fmtTime(message.ts)),
    el("span", { class: "kind" }, message.level || message.kind),
    el("span", { class: "text" }, message.text),
  );
  list.append(item);
  while (list.children.length > STREAM_MAX) list.firstChild.remove();
  list.scrollTop = list.scrollHeight;
}

function onPerformance(sample) {
  const detail = ui.detail;
  if (!detail || sample.instance !== detail.instance) return;
  detail.points.push([sample.ts, sample.pnl]);
  if (detail.points.length > 2000) detail.points.shift();
  drawChart();
}

function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

function spark() {
  return svgEl("svg", { class: "spark", viewBox: "0 0 100 24", preserveAspectRatio: "none" });
}

function scale(values, size, pad) {
  let min = Math.min(0, ...values);
  let max = Math.max(0, ...values);
  if (max === min) max = min + 1;
  return (v) => pad + (size - 2 * pad) * (1 - (v - min) / (max - min));
}

function drawSpark(svg, values) {
  svg.replaceChildren();
  if (!values || values.length < 2) return;
  const y = scale(values, 24, 2);
  const step = 100 / (values.length - 1);
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
  svg.append(svgEl("line", { x1: 0, x2: 100, y1: y(0), y2: y(0), class: "zero" }));
  svg.append(svgEl("polyline", { points, class: values[values.length - 1] >= 0 ? "up" : "down" }));
}

function drawChart() {
  const svg = $("chart");
  const points = ui.detail ? ui.detail.points : [];
  svg.replaceChildren();
  if (!points.length) {
    $("chart-value").textContent = "(no performance messages from this bot)";
    svg.append(svgEl("text", { x: 200, y: 75, class: "none", "text-anchor": "middle" }));
    return;
  }
  const last = points[points.length - 1][1];
  $("chart-value").textContent = `${fmtPnl(last)} · ${points.length} samples since ${fmtTime(points[0][0])}`;
  const values = points.map((p) => p[1]);
  const t0 = points[0][0];
  const span = Math.max(1e-9, points[points.length - 1][0] - t0);
  const y = scale(values, 140, 12);
  const x = (ts) => (points.length === 1 ? 200 : 8 + (384 * (ts - t0)) / span);
  svg.append(svgEl("line", { x1: 0, x2: 400, y1: y(0), y2: y(0), class: "zero" }));
  const coords = points.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
  svg.append(svgEl("polyline", { points: coords, class: last >= 0 ? "up" : "down" }));
  for (const p of points.slice(-1)) svg.append(svgEl("circle", { cx: x(p[0]), cy: y(p[1]), r: 3, class: last >= 0 ? "up" : "down" }));
  const hi = svgEl("text", { x: 396, y: 12, "text-anchor": "end", class: "axis" });
  hi.textContent = fmtPnl(Math.max(0, ...values));
  const lo = svgEl("text", { x: 396, y: 136, "text-anchor": "end", class: "axis" });
  lo.textContent = fmtPnl(Math.min(0, ...values));
  svg.append(hi, lo);
}

// --- wiring ------------------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  $("detail-close").addEventListener("click", closeDetail);
  $("send-form").addEventListener("submit", sendLine);
  $("ask-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      $("ask").close("ok");
    }
  });
  setInterval(() => {
    // Ages move on between pushes too.
    if (ui.snapshot && ui.events && ui.events.readyState !== EventSource.OPEN) render(ui.snapshot);
  }, 1000);
  boot();
});
