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
  streamOpen: false,
  connected: null, // the dashboard's broker connection, from the last snapshot
  broker: "",
  skew: 0, // server clock minus this browser's clock, in seconds
  hosts: [],
  items: new Map(), // target -> instance record (with pnl_series)
  snapshot: null, // {hosts, instances}: the current view's data, as the table last drew it
  rows: new Map(),
  selected: new Set(),
  sort: { key: null, dir: 1 },
  pending: new Set(),
  lastReply: new Map(),
  detail: null, // {host, instance, target, points: [[ts, pnl]], timer}
  drawQueued: false,
  wanted: {}, // select id -> value asked for by the address before its option exists
  summary: null, // above the window: the stream holds only the first rows; totals of all bots are here
  remote: null, // {key, items, matching, total}: a filtered page of /api/instances, while a filter is on
  remoteKey: null, // the query asked for (or being asked for)
  remoteTimer: null,
};

const REMOTE_LIMIT = 1000; // rows per /api/instances page (its maximum)
const REMOTE_REFRESH = 5000; // ms between two reads of the filtered page

const BAD_STATES = new Set(["crashed", "exited", "fatal", "install-failed"]);
const PROGRESS_STATES = new Set(["starting", "waiting-login", "installing", "stopping"]);
const GREY_STATES = new Set(["offline", "stale", "untrusted", "unresponsive"]);

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-") || key.startsWith("aria-")) node.setAttribute(key, value);
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

async function request(path, body) {
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

async function api(path, body) {
  const first = await request(path, body);
  // A restarted dashboard has a new token: fetch it and try once more (nothing was sent the first time).
  if (body === undefined || first.status !== 403 || !/CSRF/.test((first.data && first.data.error) || "")) return first;
  if (!(await refreshSession())) return first;
  return request(path, body);
}

async function refreshSession() {
  try {
    const { status, data } = await request("/api/session");
    if (status === 200 && data.authenticated && data.csrf) {
      ui.csrf = data.csrf;
      return true;
    }
  } catch (_) {
    // the dashboard is down: the stream's reconnection will try again
  }
  return false;
}

async function boot() {
  // The link the dashboard prints at its first start carries the password after '#' (never sent to a server).
  const linked = new URLSearchParams(location.hash.slice(1)).get("password");
  if (linked !== null) history.replaceState(null, "", location.pathname + location.search);
  const { status, data } = await api("/api/session");
  if (status !== 200) {
    $("live-text").textContent = data.error || `HTTP ${status}`;
    return;
  }
  ui.loginRequired = data.login_required;
  if (!data.authenticated) {
    if (linked && (await loginWith(linked)).status === 200) return;
    showLogin();
    return;
  }
  ui.csrf = data.csrf;
  showApp();
}

async function loginWith(password) {
  const reply = await api("/api/login", { password });
  if (reply.status === 200) {
    ui.csrf = reply.data.csrf;
    showApp();
    tellOtherTabs();
  }
  return reply;
}

// A login or logout in one tab applies to the page's other tabs in this browser.
const TABS = "BroadcastChannel" in window ? new BroadcastChannel("supervisor-dashboard-session") : null;

function tellOtherTabs() {
  if (TABS) TABS.postMessage("session");
}

async function sessionChanged(event) {
  if (event && event.data && event.data.type === "reply") {
    noteReply(event.data.target, event.data.verb, event.data.reply);
    draw();
    return;
  }
  const { status, data } = await request("/api/session").catch(() => ({ status: 0, data: null }));
  if (status !== 200) return;
  if (data.authenticated && !$("login").hidden) {
    ui.csrf = data.csrf;
    showApp();
  } else if (!data.authenticated && $("login").hidden && ui.loginRequired) {
    forgetFleet();
    showLogin();
  }
}

function forgetFleet() {
  closeDetail();
  ui.items.clear();
  ui.remote = null;
  ui.remoteKey = null;
  ui.selected.clear();
}

function showLogin(message) {
  ui.csrf = null;
  if (ui.events) ui.events.close();
  ui.events = null;
  ui.streamOpen = false;
  $("app").hidden = true;
  $("login").hidden = false;
  // Nothing of the fleet stays on screen once logged out.
  for (const id of ["hosts", "broker", "logout"]) $(id).hidden = true;
  $("hosts").replaceChildren();
  $("broker").textContent = "";
  $("login-error").textContent = message || "";
  $("live-text").textContent = "logged out";
  $("live").className = "dot";
  $("password").focus();
}

function showApp() {
  request("/api/session").then(({ data }) => showWebhook(data && data.webhook));
  $("login").hidden = true;
  $("app").hidden = false;
  $("hosts").hidden = false;
  $("broker").hidden = false;
  $("logout").hidden = !ui.loginRequired;
  connect();
}

async function login(event) {
  event.preventDefault();
  const button = $("login-button");
  button.disabled = true;
  $("login-error").textContent = "";
  try {
    const { status, data } = await loginWith($("password").value);
    if (status === 200) {
      $("password").value = "";
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
  forgetFleet();
  showLogin();
  tellOtherTabs();
}

// --- live updates ----------------------------------------------------------------------------------

const HANDLERS = {
  snapshot: (data) => onSnapshot(data),
  delta: (data) => onDelta(data),
  performance: (data) => onPerformance(data),
  alert: (data) => onAlert(data),
  ack: () => loadAlerts(),
};

function connect() {
  // One stream per browser, shared by its tabs through a SharedWorker; a browser without one gets its own.
  if ("SharedWorker" in window) connectShared();
  else connectOwn();
}

function connectShared() {
  if (!ui.worker) {
    ui.worker = new SharedWorker("/static/stream.js", { name: "supervisor-dashboard-stream" });
    ui.worker.port.addEventListener("message", ({ data }) => {
      if (data.type === "open") streamOpened(data.joined);
      else if (data.type === "error") streamFailed(false);
      else if (data.type === "closed") streamFailed(true);
      else if (HANDLERS[data.type] && ui.csrf) HANDLERS[data.type](JSON.parse(data.data));
    });
    ui.worker.port.start();
    window.addEventListener("pagehide", () => ui.worker.port.postMessage({ type: "bye" }));
  }
  ui.worker.port.postMessage({ type: "connect" });
}

function connectOwn() {
  if (ui.events) ui.events.close();
  const source = new EventSource("/events");
  ui.events = source;
  source.addEventListener("open", () => streamOpened(false));
  source.addEventListener("error", () => streamFailed(source.readyState === EventSource.CLOSED));
  for (const [name, handler] of Object.entries(HANDLERS)) {
    source.addEventListener(name, (event) => handler(JSON.parse(event.data)));
  }
}

function streamOpened(joined) {
  ui.streamOpen = true;
  updateLive();
  refreshSession(); // after a restart of the dashboard the page's token is stale
  loadAlerts(); // what was raised while this page was away
  if (joined) loadSnapshot();
}

async function streamFailed(closed) {
  ui.streamOpen = false;
  updateLive();
  if (!closed) return;
  const { data } = await request("/api/session").catch(() => ({ data: null }));
  if (ui.loginRequired && data && !data.authenticated) showLogin("Your session ended. Log in again.");
  else setTimeout(connect, 2000);
}

async function loadSnapshot() {
  // Deltas arriving meanwhile wait for it; the ones it already includes are dropped.
  ui.pendingDeltas = [];
  const { status, data } = await request("/api/snapshot").catch(() => ({ status: 0, data: null }));
  const pending = ui.pendingDeltas || [];
  ui.pendingDeltas = null;
  if (status !== 200) return;
  if (!(ui.lastNow > data.now)) onSnapshot(data);
  for (const delta of pending) if (delta.now > data.now) onDelta(delta);
}

// --- alerts ------------------------------------------------------------------------------------------

const ALERTS_MAX = 50;

function showWebhook(webhook) {
  ui.webhook = webhook || null;
  $("webhook-text").textContent = webhook ? `webhook: ${webhook}` : "no webhook (set webhook_url in dashboard.toml)";
  $("alert-test").disabled = !webhook;
  const supported = "Notification" in window;
  $("alert-notify").hidden = !supported || Notification.permission === "granted";
}

async function loadAlerts() {
  // Kept on the server: alerts from before this page was opened (or logged into) are shown too.
  const { status, data } = await request("/api/alerts").catch(() => ({ status: 0, data: null }));
  if (status !== 200) return;
  ui.alerts = new Map(data.alerts.map((alert) => [alert.id, alert]));
  renderAlerts();
}

function renderAlerts() {
  const alerts = [...(ui.alerts || new Map()).values()];
  alerts.sort((a, b) => Number(a.acked !== null) - Number(b.acked !== null) || b.id - a.id);
  const unacked = alerts.filter((alert) => alert.acked === null).length;
  $("alerts").replaceChildren(
    ...alerts.slice(0, ALERTS_MAX).map((alert) => {
      const cls = alert.acked !== null ? "acked" : alert.kind === "all-clear" ? "ok" : "bad";
      const item = el("li", { class: cls, "data-kind": alert.kind, "data-id": String(alert.id) }, el("time", {}, fmtTime(alert.ts)), ` ${alert.text}`);
      if (alert.acked === null) {
        const button = el("button", { type: "button", class: "ghost ack", "aria-label": `Acknowledge: ${alert.text}` }, "Acknowledge");
        button.addEventListener("click", () => acknowledge([alert.id]));
        item.append(button);
      }
      return item;
    }),
  );
  const count = $("alert-count");
  count.hidden = unacked === 0;
  count.textContent = `${unacked} alert${unacked === 1 ? "" : "s"}`;
  $("alert-ack-all").hidden = unacked === 0;
}

async function acknowledge(ids) {
  const { status } = await api("/api/alerts/ack", ids ? { ids } : { all: true });
  if (status === 200) loadAlerts();
}

function onAlert(alert) {
  if (!ui.alerts) ui.alerts = new Map();
  ui.alerts.set(alert.id, alert);
  renderAlerts();
  if ("Notification" in window && Notification.permission === "granted") {
    new Notification("bot-supervisor", { body: alert.text, tag: `${alert.kind}:${alert.target}` });
  }
}

async function testAlert() {
  const button = $("alert-test");
  button.disabled = true;
  $("alert-test-result").textContent = "sending…";
  try {
    const { status, data } = await api("/api/alerts/test", {});
    const ok = status === 200 && data.ok;
    $("alert-test-result").textContent = ok ? `sent (HTTP ${data.status})` : `not sent: ${data.error || `HTTP ${status}`}`;
    $("alert-test-result").className = ok ? "muted" : "error";
  } finally {
    button.disabled = false;
  }
}

function updateLive() {
  let cls = "dot";
  let text = "reconnecting…";
  if (ui.streamOpen && ui.connected === false) {
    cls = "dot warn";
    text = "broker down";
  } else if (ui.streamOpen) {
    cls = "dot on";
    text = "live";
  }
  $("live").className = cls;
  $("live-text").textContent = text;
  $("broker").textContent = ui.connected === false ? `${ui.broker} (broker down)` : ui.broker;
}

function onSnapshot(snapshot) {
  ui.pendingDeltas = null;
  ui.items = new Map(snapshot.instances.map((item) => [item.target, item]));
  ui.summary = snapshot.summary || null;
  applyHeader(snapshot);
  draw();
}

function onDelta(delta) {
  if (ui.pendingDeltas) {
    ui.pendingDeltas.push(delta);
    return;
  }
  // Known instances come as the fields that changed; new ones whole. Sparklines grow from "performance".
  for (const item of delta.instances || []) {
    const old = ui.items.get(item.target);
    ui.items.set(item.target, old ? { ...old, ...item } : { ...item, pnl_series: [] });
  }
  for (const [target, ts] of Object.entries(delta.beats || {})) {
    const old = ui.items.get(target);
    if (old) ui.items.set(target, { ...old, heartbeat_ts: ts });
  }
  for (const target of delta.removed || []) ui.items.delete(target);
  if ("summary" in delta) ui.summary = delta.summary || null;
  if (ui.remote) {
    // Rows the filtered page shows change as the stream says; the page itself is read again every few seconds.
    for (const item of delta.instances || []) {
      const old = ui.remote.items.get(item.target);
      if (old) ui.remote.items.set(item.target, { ...old, ...item });
    }
  }
  applyHeader(delta);
  draw();
}

function applyHeader(data) {
  ui.lastNow = data.now;
  ui.skew = data.now - Date.now() / 1000;
  if ("connected" in data) ui.connected = data.connected;
  if ("broker" in data) ui.broker = data.broker;
  if ("hosts" in data) ui.hosts = data.hosts;
  if (data.host_changes || data.hosts_removed) {
    // Above the window only the hosts that changed come.
    const byHost = new Map(ui.hosts.map((h) => [h.host, h]));
    for (const host of data.host_changes || []) byHost.set(host.host, host);
    for (const host of data.hosts_removed || []) byHost.delete(host);
    ui.hosts = [...byHost.values()].sort((a, b) => compare(a.host, b.host));
  }
  updateLive();
}

function serverNow() {
  return Date.now() / 1000 + ui.skew;
}

function draw() {
  if (ui.drawQueued) return;
  ui.drawQueued = true;
  requestAnimationFrame(() => {
    ui.drawQueued = false;
    render();
  });
}

// --- the table --------------------------------------------------------------------------------------

const VERBS = ["start", "stop", "restart", "import", "config"];
const COLUMNS = ["sel", "host", "instance", "state", "hb", "pid", "cpu", "rss", "uptime", "restarts", "commit", "pnl", "actions"];

function isProblem(item) {
  return item.health === "bad";
}

function stateGroup(item) {
  if (item.health === "bad") return "problems";
  if (GREY_STATES.has(item.state)) return "offline";
  if (PROGRESS_STATES.has(item.state)) return "progress";
  if (item.state === "running") return "running";
  return "stopped";
}

function matches(item) {
  const query = $("search").value.trim().toLowerCase();
  if (query && !item.instance.toLowerCase().includes(query) && !item.host.toLowerCase().includes(query)) return false;
  const host = $("filter-host").value;
  if (host && item.host !== host) return false;
  const recipe = $("filter-recipe").value;
  if (recipe && item.recipe !== recipe) return false;
  const state = $("filter-state").value;
  return !state || stateGroup(item) === state;
}

function sortValue(item, key, now) {
  switch (key) {
    case "hb":
      return item.heartbeat_ts ? now - item.heartbeat_ts : null;
    case "cpu":
      return item.cpu_percent;
    case "uptime":
      return item.state === "running" && item.started_ts ? now - item.started_ts : null;
    case "pid":
      return item.state === "running" ? item.pid : null;
    default:
      return item[key];
  }
}

function compare(a, b) {
  if (a === b) return 0;
  if (a === null || a === undefined) return 1; // blanks last, whichever the direction
  if (b === null || b === undefined) return -1;
  if (typeof a === "number" && typeof b === "number") return a - b;
  return String(a).localeCompare(String(b), undefined, { numeric: true });
}

// --- a fleet larger than the window: the stream holds its first rows, a filter reads the rest from the server

function filtering() {
  return Boolean($("search").value.trim() || $("filter-host").value || $("filter-recipe").value || $("filter-state").value);
}

function remoteQuery() {
  const params = new URLSearchParams();
  const q = $("search").value.trim();
  if (q) params.set("q", q);
  for (const [key, id] of [["host", "filter-host"], ["recipe", "filter-recipe"], ["state", "filter-state"]]) {
    if ($(id).value) params.set(key, $(id).value);
  }
  params.set("limit", String(REMOTE_LIMIT));
  return params.toString();
}

function syncRemote() {
  // Above the window, a filter is answered by the server (the stream does not hold every bot).
  const key = ui.summary && filtering() ? remoteQuery() : null;
  if (key === ui.remoteKey) return;
  ui.remoteKey = key;
  clearTimeout(ui.remoteTimer);
  if (key === null) {
    ui.remote = null;
    return;
  }
  ui.remoteTimer = setTimeout(() => loadRemote(key), 250);
}

async function loadRemote(key) {
  if (key !== ui.remoteKey) return;
  const { status, data } = await request(`/api/instances?${key}`).catch(() => ({ status: 0, data: null }));
  if (key !== ui.remoteKey) return;
  if (status === 200) {
    const old = ui.remote && ui.remote.key === key ? ui.remote.items : new Map();
    const items = new Map(data.instances.map((item) => [item.target, { pnl_series: (old.get(item.target) || {}).pnl_series || [], ...item }]));
    ui.remote = { key, items, matching: data.matching, total: data.total };
    draw();
  }
  ui.remoteTimer = setTimeout(() => loadRemote(key), REMOTE_REFRESH);
}

function shownItems() {
  return ui.remote ? ui.remote.items : ui.items;
}

function itemOf(target) {
  return ui.items.get(target) || (ui.remote ? ui.remote.items.get(target) : undefined);
}

function renderWindowNote(shown) {
  const note = $("window-note");
  if (!ui.summary) {
    note.hidden = true;
    return;
  }
  const total = ui.summary.total.toLocaleString("en");
  let text;
  if (ui.remote) {
    const matching = ui.remote.matching;
    text = `Showing ${shown.length.toLocaleString("en")} of ${matching.toLocaleString("en")} matching bots (${total} in all), read from the server every few seconds.`;
    if (matching > ui.remote.items.size) text += ` Only the first ${ui.remote.items.size.toLocaleString("en")} (problems first): narrow the search or filters to see the others.`;
  } else if (filtering()) {
    text = `Showing ${shown.length.toLocaleString("en")} of ${total} bots: asking the server for every match…`;
  } else {
    text = `Showing ${shown.length.toLocaleString("en")} of ${total} bots: problems first, then by name. Search, or filter by host, state or recipe, to see the others.`;
  }
  note.textContent = text;
  note.hidden = false;
}

function visibleItems() {
  const now = serverNow();
  const items = [...shownItems().values()].filter(matches);
  const { key, dir } = ui.sort;
  items.sort((a, b) => {
    if ($("group-host").checked) {
      const byHost = compare(a.host, b.host);
      if (byHost) return byHost;
    }
    if ($("problems-first").checked) {
      const byProblem = Number(isProblem(b)) - Number(isProblem(a));
      if (byProblem) return byProblem;
    }
    if (key) {
      const va = sortValue(a, key, now);
      const vb = sortValue(b, key, now);
      const blank = (v) => v === null || v === undefined;
      const order = blank(va) || blank(vb) ? compare(va, vb) : dir * compare(va, vb);
      if (order) return order;
    }
    return compare(a.target, b.target);
  });
  return items;
}

function render() {
  syncRemote();
  const instances = [...shownItems().values()];
  ui.snapshot = { hosts: ui.hosts, instances };
  renderHosts(ui.hosts);
  renderChoices();
  const shown = visibleItems();
  // One tab stop for the whole table: the current row (arrow keys move it) and its controls.
  // Until the keyboard is in the table, its tab stop is the first row (rows arrive in any order).
  const inTable = document.activeElement && document.activeElement.closest("#fleet tbody");
  if (!inTable || !shown.some((item) => item.target === ui.current)) ui.current = shown.length ? shown[0].target : null;
  const body = document.querySelector("#fleet tbody");
  const wanted = [];
  let group = null;
  for (const item of shown) {
    if ($("group-host").checked && item.host !== group) {
      group = item.host;
      wanted.push(groupRow(item.host, shown.filter((i) => i.host === item.host)));
    }
    let row = ui.rows.get(item.target);
    if (!row) {
      row = makeRow(item);
      ui.rows.set(item.target, row);
    }
    updateRow(row, item);
    wanted.push(row.tr);
  }
  wanted.forEach((tr, index) => {
    if (body.children[index] !== tr) body.insertBefore(tr, body.children[index] || null);
  });
  while (body.children.length > wanted.length) body.lastChild.remove();
  for (const [target, row] of ui.rows) {
    if (!shownItems().has(target)) {
      row.tr.remove();
      ui.rows.delete(target);
      ui.selected.delete(target);
    }
  }
  $("empty").hidden = instances.length > 0 || Boolean(ui.summary);
  $("no-match").hidden = !((instances.length > 0 || ui.remote) && shown.length === 0);
  renderSummary(instances);
  renderWindowNote(shown);
  renderBulk(shown);
  saveView();
  for (const th of document.querySelectorAll("#fleet th[data-sort]")) {
    const on = ui.sort.key === th.dataset.sort;
    th.setAttribute("aria-sort", on ? (ui.sort.dir > 0 ? "ascending" : "descending") : "none");
  }
  if (ui.detail) {
    const item = itemOf(ui.detail.target);
    const pill = $("detail-state");
    pill.textContent = item ? item.state : "gone";
    pill.className = `pill state-${item ? item.state : "offline"}`;
    const canSend = Boolean(item && item.state === "running" && item.host_online && ui.connected !== false);
    $("send-line").disabled = !canSend;
    $("send-button").disabled = !canSend;
    $("send-line").placeholder = canSend ? "one line, sent literally when you press Enter" : "the bot is not running";
  }
}

const groupRows = new Map();

function groupRow(host, items) {
  let tr = groupRows.get(host);
  if (!tr) {
    const button = el("button", { type: "button", class: "ghost small", textContent: "select all on this host" });
    button.addEventListener("click", () => {
      for (const item of shownItems().values()) if (item.host === host && matches(item)) ui.selected.add(item.target);
      draw();
    });
    tr = el("tr", { class: "group", "data-host": host }, el("th", { colSpan: COLUMNS.length, scope: "rowgroup" }, el("span", { class: "group-name" }), button));
    groupRows.set(host, tr);
  }
  const bad = items.filter(isProblem).length;
  tr.querySelector(".group-name").textContent = `${host} · ${items.length} bot${items.length === 1 ? "" : "s"}${bad ? ` · ${bad} need attention` : ""}`;
  return tr;
}

function renderChoices() {
  const fill = (id, values, label) => {
    const select = $(id);
    const have = [...select.options].slice(1).map((o) => o.value);
    if (have.join("\n") === values.join("\n")) return;
    const current = select.value;
    select.replaceChildren(el("option", { value: "", textContent: label }), ...values.map((v) => el("option", { value: v, textContent: v })));
    const wanted = ui.wanted[id] || current; // from the address, until the choice exists
    select.value = values.includes(wanted) ? wanted : "";
    if (values.includes(wanted)) delete ui.wanted[id];
  };
  const items = [...ui.items.values()];
  fill("filter-host", [...new Set([...ui.hosts.map((h) => h.host), ...items.map((i) => i.host)])].sort(), "All hosts");
  const recipes = ui.summary ? ui.summary.recipes : items.map((i) => i.recipe);
  fill("filter-recipe", [...new Set(recipes.filter(Boolean))].sort(), "All recipes");
}

// --- the view in the address: sort, filters and grouping survive a reload and can be shared ---------

const VIEW_FIELDS = { q: "search", host: "filter-host", state: "filter-state", recipe: "filter-recipe" };

function saveView() {
  const params = new URLSearchParams();
  for (const [key, id] of Object.entries(VIEW_FIELDS)) {
    const value = $(id).value.trim() || ui.wanted[id] || "";
    if (value) params.set(key, value);
  }
  if (!$("problems-first").checked) params.set("problems", "0");
  if ($("group-host").checked) params.set("group", "1");
  if (ui.sort.key) params.set("sort", `${ui.sort.dir < 0 ? "-" : ""}${ui.sort.key}`);
  const query = params.toString();
  const wanted = query ? `?${query}` : location.pathname;
  if (location.search !== (query ? `?${query}` : "")) history.replaceState(null, "", wanted);
}

function restoreView() {
  const params = new URLSearchParams(location.search);
  for (const [key, id] of Object.entries(VIEW_FIELDS)) {
    const value = params.get(key);
    if (!value) continue;
    if ($(id).tagName === "SELECT" && ![...$(id).options].some((o) => o.value === value)) ui.wanted[id] = value;
    else $(id).value = value;
  }
  if (params.get("problems") === "0") $("problems-first").checked = false;
  if (params.get("group") === "1") $("group-host").checked = true;
  const sort = params.get("sort");
  if (sort) ui.sort = { key: sort.replace(/^-/, ""), dir: sort.startsWith("-") ? -1 : 1 };
}

function filterHost(host) {
  const select = $("filter-host");
  select.value = select.value === host ? "" : host;
  delete ui.wanted["filter-host"];
  draw();
}

const HOST_CHIPS = 50; // above the window: chips for the hosts that need a look (and the chosen one) at most

function renderHosts(all) {
  const box = $("hosts");
  const chosen = $("filter-host").value;
  let hosts = all;
  let more = 0;
  if (ui.summary) {
    const problems = ui.summary.problem_hosts || {};
    const wanted = all.filter((h) => h.host === chosen || !h.online || h.trusted === false || problems[h.host]);
    hosts = wanted.slice(0, HOST_CHIPS);
    more = all.length - hosts.length;
  }
  box.replaceChildren(
    ...hosts.map((h) =>
      el(
        "button",
        {
          type: "button",
          "aria-pressed": String(chosen === h.host),
          onclick: () => filterHost(h.host),
          class: `chip ${h.online ? "online" : "offline"}${h.trusted === false ? " untrusted" : ""}`,
          title:
            h.trusted === false
              ? "record not signed with the shared secret: untrusted, never acted on"
              : h.state === "unseen"
                ? "not heard from since the dashboard started"
                : `agent ${h.version || "?"}${h.signed ? ", signed" : ""}; click to show only its bots`,
        },
        el("span", { class: "dot small-dot" + (h.online ? " on" : "") }),
        `${h.host} · ${h.instances}` + (h.trusted === false ? " · untrusted" : h.online ? "" : " · offline"),
      ),
    ),
    ...(more ? [el("span", { class: "muted", id: "hosts-more" }, `${more.toLocaleString("en")} more host${more === 1 ? "" : "s"}: pick one in the host filter`)] : []),
  );
}

function renderSummary(instances) {
  const count = (pred) => instances.filter(pred).length;
  // Above the window the server counts every bot; the PnL total is of the bots shown.
  const totals = ui.summary ? ui.summary.counts : null;
  const running = totals ? totals.running : count((i) => i.state === "running" && i.health === "ok");
  const bad = totals ? totals.bad : count((i) => i.health === "bad");
  const grey = totals ? totals.off : count((i) => i.health === "off");
  const progress = totals ? totals.progress : count((i) => i.health === "ok" && PROGRESS_STATES.has(i.state));
  const stopped = totals ? totals.stopped : instances.length - running - bad - grey - progress;
  // A figure no longer reported (its strategy stopped) is stale: shown with its age, left out of the total.
  const now = serverNow();
  const live = instances.filter((i) => hasLivePnl(i, now));
  const total = live.reduce((sum, i) => sum + i.pnl, 0);
  const withPnl = live.length;
  const stale = count((i) => typeof i.pnl === "number") - withPnl;
  $("summary").replaceChildren(
    el("span", { class: "sum ok" }, el("b", {}, String(running)), " running"),
    el("span", { class: "sum bad" }, el("b", {}, String(bad)), " need attention"),
    el("span", { class: "sum starting" }, el("b", {}, String(progress)), " starting or at login"),
    el("span", { class: "sum idle" }, el("b", {}, String(stopped)), " stopped"),
    el("span", { class: "sum off" }, el("b", {}, String(grey)), " offline or stale"),
    el("span", { class: "sum muted" }, `${ui.hosts.length} host${ui.hosts.length === 1 ? "" : "s"}`),
    el("span", { class: `sum pnl-total ${total > 0 ? "up" : total < 0 ? "down" : ""}` }, "PnL ", el("b", { id: "pnl-total" }, withPnl ? fmtPnl(total) : "–"), stale ? el("span", { class: "muted", id: "pnl-stale" }, ` (${stale} stale left out)`) : ""),
  );
}

function renderBulk(shown) {
  const count = ui.selected.size;
  $("bulk-count").textContent = `${count} selected`;
  $("bulk").classList.toggle("active", count > 0); // on a phone it then stays at the bottom of the screen
  for (const button of document.querySelectorAll("#bulk [data-bulk]")) button.disabled = count === 0 || ui.connected === false;
  $("bulk-clear").disabled = count === 0;
  $("select-matching").textContent = `Select all ${shown.length} shown`;
  $("select-matching").disabled = shown.length === 0;
  const all = $("select-all");
  const chosen = shown.filter((i) => ui.selected.has(i.target)).length;
  all.checked = shown.length > 0 && chosen === shown.length;
  all.indeterminate = chosen > 0 && chosen < shown.length;
}

function makeRow(item) {
  const cells = {};
  const tr = el("tr", { "data-target": item.target });
  tr.setAttribute("aria-label", `${item.instance} on ${item.host}`);
  tr.addEventListener("focusin", () => {
    if (ui.current !== item.target) {
      ui.current = item.target;
      draw();
    }
  });
  tr.addEventListener("keydown", (event) => rowKey(event, item.target));
  // A click anywhere on the row but its controls opens the bot (its console, figures and history).
  tr.addEventListener("click", (event) => {
    if (!event.target.closest("button, input, a, select, label")) openDetail(item.target);
  });
  for (const name of COLUMNS) {
    cells[name] = el("td", { class: name });
    tr.append(cells[name]);
  }
  const box = el("input", { type: "checkbox", class: "pick" });
  box.setAttribute("aria-label", `select ${item.instance} on ${item.host}`);
  box.addEventListener("change", () => {
    if (box.checked) ui.selected.add(item.target);
    else ui.selected.delete(item.target);
    draw();
  });
  cells.sel.append(box);
  cells.instance.append(el("span", { class: "name" }), el("span", { class: "recipe muted" }));
  cells.state.append(el("span", { class: "pill" }), el("div", { class: "alert" }));
  cells.pnl.append(spark(), el("span", { class: "pnl-value" }));
  const buttons = {};
  const bar = el("div", { class: "buttons" });
  for (const verb of VERBS) {
    buttons[verb] = el("button", { type: "button", class: `verb verb-${verb}`, textContent: verb, "data-verb": verb });
    buttons[verb].setAttribute("aria-label", `${verb} ${item.instance} on ${item.host}`);
    buttons[verb].addEventListener("click", () => ask(item.target, verb));
    bar.append(buttons[verb]);
  }
  buttons.console = el("button", { type: "button", class: "verb verb-console", textContent: "console", "data-verb": "console" });
  buttons.console.setAttribute("aria-label", `console of ${item.instance} on ${item.host}`);
  buttons.console.addEventListener("click", () => openDetail(item.target));
  bar.append(buttons.console);
  cells.actions.append(bar, el("div", { class: "reply muted" }));
  return { tr, cells, buttons, box };
}

function rowKey(event, target) {
  if (event.target.tagName !== "TR") return;
  const rows = [...document.querySelectorAll("#fleet tbody tr[data-target]")];
  const index = rows.findIndex((tr) => tr.dataset.target === target);
  const moves = { ArrowDown: index + 1, ArrowUp: index - 1, Home: 0, End: rows.length - 1, PageDown: index + 10, PageUp: index - 10 };
  if (event.key in moves) {
    event.preventDefault();
    const next = rows[Math.max(0, Math.min(rows.length - 1, moves[event.key]))];
    ui.current = next.dataset.target;
    render();
    next.focus();
  } else if (event.key === "Enter") {
    event.preventDefault();
    const row = ui.rows.get(target);
    if (row && !row.buttons.console.disabled) openDetail(target);
  } else if (event.key === " ") {
    event.preventDefault();
    if (ui.selected.has(target)) ui.selected.delete(target);
    else ui.selected.add(target);
    draw();
  }
}

function allowed(item, verb) {
  if (!item.host_online || ui.connected === false) return false;
  const running = item.state === "running";
  switch (verb) {
    case "start":
      return !running && !PROGRESS_STATES.has(item.state);
    case "stop":
      return item.state !== "stopped";
    case "import":
    case "config":
      return running;
    default:
      return true; // restart, console (a dead bot's console shows its log)
  }
}

const STATE_HINTS = {
  starting: "process up, ready line not seen yet",
  "waiting-login": "waiting at its login dialog: log in with 'supervisor attach'",
  flapping: "restarted again and again: a problem until it has run a while without a restart",
};

function updateRow(row, item) {
  const { tr, cells, buttons } = row;
  const now = serverNow();
  tr.className = `health-${item.health}${ui.detail && ui.detail.target === item.target ? " selected" : ""}${PROGRESS_STATES.has(item.state) ? " progress" : ""}`;
  tr.dataset.state = item.state;
  row.box.checked = ui.selected.has(item.target);
  cells.host.textContent = item.host;
  cells.instance.querySelector(".name").textContent = item.instance;
  cells.instance.querySelector(".recipe").textContent = item.recipe ? `${item.recipe}${item.plugin ? " · plugin" : ""}` : "";
  const pill = cells.state.querySelector(".pill");
  // A bot restarted again and again is "flapping", however healthy its current run looks.
  const shown = item.state === "running" && (item.alert || "").startsWith("flapping") ? "flapping" : item.state;
  pill.textContent = shown;
  pill.title = STATE_HINTS[shown] || "";
  pill.className = `pill state-${shown}`;
  let alert = item.alert || "";
  if (alert === "no heartbeat" && item.alert_ts) alert = `no heartbeat for ${fmtDuration(now - item.alert_ts)}`;
  else if (alert && item.alert_ts) alert = `${alert} · ${fmtDuration(now - item.alert_ts)} ago`;
  cells.state.querySelector(".alert").textContent = alert;
  const running = item.state === "running";
  // starting and waiting-login bots have a live process: show its figures too.
  const alive = running || item.state === "starting" || item.state === "waiting-login";
  const hbAge = item.heartbeat_ts ? Math.max(0, now - item.heartbeat_ts) : null;
  const late = hbAge !== null && hbAge > 2.5 * item.heartbeat_interval;
  cells.hb.textContent = fmtAge(hbAge);
  cells.hb.className = `hb${late && running ? " late" : ""}`;
  cells.pid.textContent = alive && item.pid ? String(item.pid) : "–";
  cells.cpu.textContent = alive && item.cpu_percent !== null && item.cpu_percent !== undefined ? `${item.cpu_percent.toFixed(1)}%` : "–";
  cells.rss.textContent = alive ? fmtBytes(item.rss) : "–";
  cells.uptime.textContent = alive && item.started_ts ? fmtDuration(now - item.started_ts) : "–";
  cells.restarts.textContent = item.restarts === null || item.restarts === undefined ? "–" : String(item.restarts);
  cells.commit.textContent = item.commit ? item.commit.slice(0, 8) : "–";
  cells.commit.title = item.commit || "";
  if (row.series !== item.pnl_series) {
    drawSpark(cells.pnl.querySelector("svg"), item.pnl_series);
    row.series = item.pnl_series;
  }
  const value = cells.pnl.querySelector(".pnl-value");
  const stale = typeof item.pnl === "number" && !hasLivePnl(item, now);
  value.textContent = fmtPnl(item.pnl) + (stale ? ` · stale, ${fmtDuration(now - item.pnl_ts)} old` : "");
  value.className = `pnl-value ${stale ? "stale" : item.pnl > 0 ? "up" : item.pnl < 0 ? "down" : ""}`;
  value.title = stale ? "no PnL report lately (the strategy stopped?): left out of the fleet total" : "";
  for (const verb of VERBS) {
    const busy = ui.pending.has(`${item.target}:${verb}`);
    buttons[verb].disabled = busy || !allowed(item, verb);
    buttons[verb].textContent = busy ? `${verb}…` : verb;
  }
  buttons.console.disabled = !allowed(item, "console");
  const stop = ui.current === item.target ? 0 : -1;
  tr.tabIndex = stop;
  for (const control of [row.box, ...Object.values(buttons)]) control.tabIndex = stop;
  const reply = ui.lastReply.get(item.target);
  const replyCell = cells.actions.querySelector(".reply");
  replyCell.textContent = reply ? reply.text : "";
  replyCell.className = `reply ${reply ? reply.cls : ""}`;
}

// --- commands ----------------------------------------------------------------------------------------

const PROMPTS = {
  stop: {
    title: "Stop {bot}?",
    text: "Stopping runs the bot's stop command, which cancels its open orders, and then ends its process. The agent will not restart it.",
    ok: "Stop it",
  },
  restart: {
    title: "Restart {bot}?",
    text: "Restarting runs the bot's stop command, which cancels its open orders, then starts it again.",
    ok: "Restart it",
  },
  import: { title: "Import a strategy into {bot}", text: "Strategy (config file) name, as the bot's `import` command takes it:", input: "conf_pure_mm_1.yml", ok: "Import" },
  config: {
    title: "Change the configuration of {bot}",
    text: "KEY=VALUE pairs separated by spaces (empty: show the current configuration):",
    input: "",
    ok: "Send",
  },
};

function botName(target) {
  const [host, instance] = target.split("/");
  return `${instance} on ${host}`;
}

async function ask(target, verb) {
  const prompt = PROMPTS[verb];
  let data = {};
  if (prompt) {
    const answer = await dialog({ ...prompt, title: prompt.title.replace("{bot}", botName(target)) });
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

function dialog({ title, text, input, ok, items }) {
  return new Promise((resolve) => {
    const box = $("ask");
    const field = $("ask-input");
    $("ask-title").textContent = title;
    $("ask-text").textContent = text;
    $("ask-ok").textContent = ok;
    $("ask-ok").classList.toggle("danger", ok.startsWith("Stop"));
    $("ask-list").replaceChildren(...(items || []).map((line) => el("li", {}, line)));
    $("ask-list").hidden = !items || items.length === 0;
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
    // A confirmation starts on Cancel, so Enter never stops bots by accident.
    (input === undefined ? $("ask-cancel") : field).focus();
  });
}

async function bulk(verb) {
  const targets = [...ui.selected].filter((target) => itemOf(target)).sort();
  if (!targets.length) return;
  const hosts = [...new Set(targets.map((target) => target.split("/")[0]))];
  const count = `${targets.length} bot${targets.length === 1 ? "" : "s"}`;
  const where = `${hosts.length === 1 ? "host" : "hosts"} ${hosts.join(", ")}`;
  const verbTitle = verb[0].toUpperCase() + verb.slice(1);
  const answer = await dialog({
    title: `${verbTitle} ${count} on ${where}?`,
    text:
      verb === "stop"
        ? "Each bot runs its stop command, which cancels its open orders, and then its process ends. The agents will not restart them."
        : `Each of these bots is sent ${verb}; every reply is shown below the table.`,
    ok: `${verbTitle} ${count}`,
    items: targets.map(botName),
  });
  if (answer === null) return;
  await Promise.all(targets.map((target) => command(target, verb, {})));
}

async function command(target, verb, data) {
  const key = `${target}:${verb}`;
  ui.pending.add(key);
  draw();
  let reply;
  try {
    const { status, data: body } = await api("/api/command", { target, verb, data });
    if (status === 403 && ui.loginRequired && /log in/.test(body.error || "")) {
      showLogin("Your session ended. Log in again.");
      return null;
    }
    reply = status === 200 ? body : { ok: false, timed_out: false, msg: body.error || `HTTP ${status}`, verb, target };
  } catch (error) {
    reply = { ok: false, timed_out: false, msg: String(error), verb, target };
  } finally {
    ui.pending.delete(key);
  }
  if (verb !== "tail" && verb !== "logs") {
    noteReply(target, verb, reply);
    if (TABS) TABS.postMessage({ type: "reply", target, verb, reply }); // the browser's other tabs show it too
  }
  draw();
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

const LOG_LINES = 200;
const LOG_REFRESH = 5; // seconds between reads of a dead bot's log

async function openDetail(target) {
  closeDetail();
  const [host, instance] = target.split("/");
  ui.detail = { target, host, instance, points: [], timer: null, busy: false, lastMessage: null, polling: false, logAt: 0, sent: [], recall: -1, range: 0, plot: null };
  for (const button of document.querySelectorAll(".range button")) button.setAttribute("aria-pressed", String(button.dataset.range === "0"));
  drawControllers({});
  $("detail").hidden = false;
  $("detail-title").textContent = target;
  $("screen").textContent = "loading…";
  $("send-reply").textContent = "";
  $("stream").replaceChildren();
  $("log").hidden = true;
  $("log").textContent = "";
  $("log-info").textContent = "";
  $("log-search").value = "";
  $("log-download").disabled = true;
  render();
  refreshScreen();
  ui.detail.timer = setInterval(() => {
    refreshScreen();
    pollMessages();
  }, 1000);
  ($("send-line").disabled ? $("detail-close") : $("send-line")).focus({ preventScroll: true });
  const { status, data } = await api(`/api/history/${encodeURIComponent(host)}/${encodeURIComponent(instance)}`);
  if (status !== 200 || !ui.detail || ui.detail.target !== target) return;
  ui.detail.points = data.performance;
  drawChart();
  drawControllers(data.controllers || {});
  ui.detail.lastMessage = 0;
  for (const message of data.messages) addStream(message);
}

function closeDetail() {
  const was = ui.detail;
  if (was && was.timer) clearInterval(was.timer);
  ui.detail = null;
  $("detail").hidden = true;
  render();
  const row = was && ui.rows.get(was.target);
  if (row) row.buttons.console.focus({ preventScroll: true });
}

async function refreshScreen() {
  const detail = ui.detail;
  if (!detail || detail.busy || document.hidden) return;
  const item = itemOf(detail.target);
  const running = item && item.state === "running";
  if (!running && Date.now() / 1000 - detail.logAt < LOG_REFRESH) return;
  detail.busy = true;
  try {
    const screen = $("screen");
    const atBottom = screen.scrollHeight - screen.scrollTop - screen.clientHeight < 30;
    let reply = running ? await command(detail.target, "tail", { lines: TAIL_LINES }) : null;
    if (ui.detail !== detail) return;
    if (reply && reply.ok) {
      screen.textContent = (reply.result && reply.result.screen) || "";
      screen.classList.remove("stale");
    } else {
      // No session to read (crashed, fatal, stopped): the log has its last output, a traceback included.
      detail.logAt = Date.now() / 1000;
      reply = await command(detail.target, "logs", { lines: LOG_LINES });
      if (ui.detail !== detail || !reply) return;
      const state = item ? item.state : "gone";
      if (reply.ok) {
        const log = (reply.result && reply.result.log) || "";
        screen.textContent = `(${state}: not running. Its last output, from its log:)\n${log || "(nothing logged)"}`;
      } else {
        screen.textContent = `(${state}: ${reply.timed_out ? "timed out" : "no log"}: ${reply.msg})`;
      }
      screen.classList.add("stale");
    }
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
  if (text && detail.sent[detail.sent.length - 1] !== text) detail.sent.push(text);
  detail.recall = -1;
  const reply = await command(detail.target, "send", { text });
  if (!reply) return;
  $("send-reply").textContent = reply.ok ? `sent: ${text}` : `not sent: ${reply.msg}`;
  $("send-reply").className = `small ${reply.ok ? "muted" : "error"}`;
  setTimeout(refreshScreen, 300);
}

function recallLine(event) {
  const detail = ui.detail;
  if (!detail || !detail.sent.length || (event.key !== "ArrowUp" && event.key !== "ArrowDown")) return;
  event.preventDefault();
  const last = detail.sent.length - 1;
  if (event.key === "ArrowUp") detail.recall = detail.recall < 0 ? last : Math.max(0, detail.recall - 1);
  else detail.recall = detail.recall < 0 || detail.recall >= last ? -1 : detail.recall + 1;
  $("send-line").value = detail.recall < 0 ? "" : detail.sent[detail.recall];
}

async function loadLog() {
  const detail = ui.detail;
  if (!detail) return;
  $("log-info").textContent = "loading…";
  const reply = await command(detail.target, "logs", { lines: Number($("log-lines").value) });
  if (ui.detail !== detail || !reply) return;
  if (!reply.ok) {
    $("log-info").textContent = `no log: ${reply.msg}`;
    return;
  }
  detail.log = (reply.result && reply.result.log) || "";
  detail.logTime = new Date();
  $("log").hidden = false;
  $("log-download").disabled = false;
  renderLog();
}

function renderLog() {
  const detail = ui.detail;
  if (!detail || detail.log === undefined) return;
  const lines = detail.log ? detail.log.split("\n") : [];
  const query = $("log-search").value.trim().toLowerCase();
  const shown = query ? lines.filter((line) => line.toLowerCase().includes(query)) : lines;
  $("log").textContent = shown.join("\n");
  $("log-info").textContent = `${query ? `${shown.length} of ` : ""}${lines.length} lines, read at ${fmtTime(detail.logTime / 1000)}`;
  $("log").scrollTop = $("log").scrollHeight;
}

function downloadLog() {
  const detail = ui.detail;
  if (!detail || detail.log === undefined) return;
  const link = el("a", { href: URL.createObjectURL(new Blob([detail.log], { type: "text/plain" })), download: `${detail.host}-${detail.instance}.log` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

async function pollMessages() {
  // Stream lines are fetched by the tab showing the console only: the shared stream never carries them.
  const detail = ui.detail;
  if (!detail || detail.lastMessage === null || detail.polling) return;
  detail.polling = true;
  try {
    const path = `/api/messages/${encodeURIComponent(detail.host)}/${encodeURIComponent(detail.instance)}`;
    const { status, data } = await request(`${path}?after=${detail.lastMessage}`);
    if (status !== 200 || ui.detail !== detail) return;
    for (const message of data.messages) addStream(message);
  } finally {
    detail.polling = false;
  }
}

function addStream(message) {
  if (ui.detail && message.id > (ui.detail.lastMessage || 0)) ui.detail.lastMessage = message.id;
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

const PNL_STALE = 30; // seconds without a performance report (Hummingbot sends one a second while a strategy runs)

function hasLivePnl(item, now) {
  return typeof item.pnl === "number" && typeof item.pnl_ts === "number" && now - item.pnl_ts <= PNL_STALE;
}

function onPerformance(sample) {
  const owners = [...ui.items.values()].filter((item) => item.instance === sample.instance);
  if (owners.length === 1) {
    const series = [...(owners[0].pnl_series || []), sample.pnl].slice(-60);
    ui.items.set(owners[0].target, { ...owners[0], pnl_series: series, pnl: sample.pnl, pnl_ts: sample.ts });
    draw();
  }
  const detail = ui.detail;
  if (!detail || sample.instance !== detail.instance) return;
  detail.points.push([sample.ts, sample.pnl]);
  if (detail.points.length > 1 && sample.ts < detail.points[detail.points.length - 2][0]) detail.points.sort((a, b) => a[0] - b[0]);
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

const CHART = { width: 400, height: 150, left: 46, right: 10, top: 10, bottom: 22 };

function gaps(points) {
  // A pause much longer than the usual spacing (a broker outage, a stopped bot) is drawn as a gap.
  const steps = points.slice(1).map((p, i) => p[0] - points[i][0]).sort((a, b) => a - b);
  const median = steps.length ? steps[Math.floor(steps.length / 2)] : 0;
  return Math.max(5 * median, 1);
}

function drawControllers(controllers) {
  const names = Object.keys(controllers).sort();
  $("controllers").hidden = names.length === 0;
  const cell = (value, fmt) => el("td", { class: "num" }, value === undefined ? "–" : fmt(value));
  $("controllers").querySelector("tbody").replaceChildren(
    ...names.map((name) => {
      const c = controllers[name];
      return el(
        "tr",
        { "data-controller": name },
        el("td", {}, name),
        cell(c.global_pnl_quote, fmtPnl),
        cell(c.realized_pnl_quote, fmtPnl),
        cell(c.unrealized_pnl_quote, fmtPnl),
        cell(c.volume_traded, (v) => v.toFixed(2)),
      );
    }),
  );
}

function setRange(seconds) {
  if (!ui.detail) return;
  ui.detail.range = seconds;
  for (const button of document.querySelectorAll(".range button")) button.setAttribute("aria-pressed", String(Number(button.dataset.range) === seconds));
  drawChart();
}

function hoverChart(event) {
  const detail = ui.detail;
  const svg = $("chart");
  for (const node of svg.querySelectorAll(".hover")) node.remove();
  if (!detail || !detail.plot) return;
  const box = svg.getBoundingClientRect();
  const px = ((event.clientX - box.left) / box.width) * CHART.width;
  const { points, x, y } = detail.plot;
  let best = points[0];
  for (const p of points) if (Math.abs(x(p[0]) - px) < Math.abs(x(best[0]) - px)) best = p;
  const cx = x(best[0]);
  svg.append(svgEl("line", { class: "hover", x1: cx, x2: cx, y1: CHART.top, y2: CHART.height - CHART.bottom }));
  svg.append(svgEl("circle", { class: "hover", cx, cy: y(best[1]), r: 3 }));
  const text = svgEl("text", { class: "axis hover", x: Math.min(cx + 4, CHART.width - 110), y: CHART.top + 12 });
  text.textContent = `${fmtPnl(best[1])} at ${fmtTime(best[0])}`;
  svg.append(text);
  $("chart").setAttribute("aria-label", `PnL history; ${text.textContent}`);
}

function drawChart() {
  const svg = $("chart");
  const detail = ui.detail;
  const cutoff = detail && detail.range ? serverNow() - detail.range : -Infinity;
  const points = detail ? detail.points.filter((p) => p[0] >= cutoff) : [];
  svg.replaceChildren();
  if (detail) detail.plot = null;
  if (!points.length) {
    $("chart-value").textContent = detail && detail.points.length ? "(no samples in this range)" : "(no performance messages from this bot)";
    return;
  }
  const { width, height, left, right, top, bottom } = CHART;
  const last = points[points.length - 1][1];
  $("chart-value").textContent = `${fmtPnl(last)} · ${points.length} samples since ${fmtTime(points[0][0])}`;
  const values = points.map((p) => p[1]);
  const t0 = points[0][0];
  const span = Math.max(1e-9, points[points.length - 1][0] - t0);
  let min = Math.min(0, ...values);
  let max = Math.max(0, ...values);
  if (max === min) max = min + 1;
  const y = (v) => top + (height - top - bottom) * (1 - (v - min) / (max - min));
  const x = (ts) => (points.length === 1 ? (left + width - right) / 2 : left + ((width - left - right) * (ts - t0)) / span);
  svg.append(svgEl("line", { x1: left, x2: width - right, y1: y(0), y2: y(0), class: "zero" }));
  const limit = gaps(points);
  let segment = [];
  const flush = () => {
    if (segment.length > 1) svg.append(svgEl("polyline", { points: segment.join(" "), class: last >= 0 ? "up" : "down" }));
    else if (segment.length === 1) {
      const [cx, cy] = segment[0].split(",");
      svg.append(svgEl("circle", { cx, cy, r: 1.5, class: last >= 0 ? "up" : "down" }));
    }
    segment = [];
  };
  points.forEach((p, i) => {
    if (i > 0 && p[0] - points[i - 1][0] > limit) flush();
    segment.push(`${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`);
  });
  flush();
  detail.plot = { points, x, y };
  const end = points[points.length - 1];
  const dot = svgEl("circle", { cx: x(end[0]), cy: y(end[1]), r: 3, class: `end ${last >= 0 ? "up" : "down"}` });
  const tip = svgEl("title", {});
  tip.textContent = `${fmtPnl(end[1])} at ${fmtTime(end[0])}`;
  dot.append(tip);
  svg.append(dot);
  // Value labels sit in the left gutter and times under the plot, never on the line.
  const label = (text, attrs) => {
    const node = svgEl("text", { class: "axis", ...attrs });
    node.textContent = text;
    svg.append(node);
  };
  label(fmtPnl(max), { x: left - 6, y: top + 4, "text-anchor": "end" });
  label(fmtPnl(min), { x: left - 6, y: height - bottom, "text-anchor": "end" });
  label(fmtTime(t0), { x: left, y: height - 6, "text-anchor": "start" });
  label(fmtTime(end[0]), { x: width - right, y: height - 6, "text-anchor": "end" });
}

// --- wiring ------------------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  if (TABS) TABS.addEventListener("message", sessionChanged);
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  $("alert-test").addEventListener("click", testAlert);
  $("alert-ack-all").addEventListener("click", () => acknowledge(null));
  $("log-load").addEventListener("click", loadLog);
  $("log-lines").addEventListener("change", loadLog);
  $("log-search").addEventListener("input", renderLog);
  $("log-download").addEventListener("click", downloadLog);
  for (const button of document.querySelectorAll(".range button")) button.addEventListener("click", () => setRange(Number(button.dataset.range)));
  $("chart").addEventListener("pointermove", hoverChart);
  $("chart").addEventListener("pointerleave", () => {
    for (const node of $("chart").querySelectorAll(".hover")) node.remove();
  });
  $("alert-notify").addEventListener("click", () => Notification.requestPermission().then(() => showWebhook(ui.webhook)));
  $("detail-close").addEventListener("click", closeDetail);
  $("send-form").addEventListener("submit", sendLine);
  $("send-line").addEventListener("keydown", recallLine);
  $("ask-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      $("ask").close("ok");
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && ui.detail && !$("ask").open) closeDetail();
  });
  $("tools").addEventListener("submit", (event) => event.preventDefault());
  for (const id of ["search", "filter-host", "filter-state", "filter-recipe", "problems-first", "group-host"]) {
    $(id).addEventListener("input", draw);
    $(id).addEventListener("change", draw);
  }
  for (const th of document.querySelectorAll("#fleet th[data-sort]")) {
    th.querySelector("button").addEventListener("click", () => {
      const key = th.dataset.sort;
      ui.sort = { key, dir: ui.sort.key === key ? -ui.sort.dir : 1 };
      draw();
    });
  }
  $("select-all").addEventListener("change", () => {
    const shown = visibleItems();
    if ($("select-all").checked) for (const item of shown) ui.selected.add(item.target);
    else for (const item of shown) ui.selected.delete(item.target);
    draw();
  });
  $("select-matching").addEventListener("click", () => {
    for (const item of visibleItems()) ui.selected.add(item.target);
    draw();
  });
  $("bulk-clear").addEventListener("click", () => {
    ui.selected.clear();
    draw();
  });
  for (const button of document.querySelectorAll("#bulk [data-bulk]")) button.addEventListener("click", () => bulk(button.dataset.bulk));
  setInterval(() => {
    // Ages move on between pushes: only changed records are sent.
    if (ui.items.size || ui.remote) draw();
  }, 1000);
  $("skip-to-bots").addEventListener("click", (event) => {
    // Straight to the table's tab stop (its current row), past the header, alerts and filters.
    const row = document.querySelector("#fleet tbody tr[tabindex='0']");
    if (!row) return;
    event.preventDefault();
    row.focus();
  });
  restoreView();
  boot();
});
