// vllama's status page: one Server-Sent Events stream (/api/vllama/events) read with fetch,
// not EventSource, because EventSource cannot send the Authorization header a daemon with API
// keys asks for. The key lives in sessionStorage only: gone when the tab closes.
"use strict";

const KEY_ITEM = "vllama-api-key";
const RECENT_MAX = 100;
const RETRY_MS = 2000;

const ui = {
  models: document.getElementById("models"),
  devices: document.getElementById("devices"),
  recent: document.getElementById("recent"),
  connection: document.getElementById("connection"),
  queued: document.getElementById("queued"),
  keyForm: document.getElementById("key-form"),
  key: document.getElementById("key"),
  actionError: document.getElementById("action-error"),
  logsSection: document.getElementById("logs-section"),
  logsModel: document.getElementById("logs-model"),
  logs: document.getElementById("logs"),
};

let snapshot = null; // the last status event
let receivedAt = 0; // when it came (ms), so countdowns tick between snapshots
let recent = [];
let logsFor = null;
const busy = new Set(); // models with a load or unload in progress from this page

function headers(extra) {
  const result = Object.assign({}, extra || {});
  const key = sessionStorage.getItem(KEY_ITEM);
  if (key) result.Authorization = "Bearer " + key;
  return result;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    if (name === "class") node.className = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function bytes(n) {
  if (!n) return "0 B";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return (n >= 10 || i === 0 ? Math.round(n) : n.toFixed(1)) + " " + units[i];
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  seconds = Math.max(0, Math.round(seconds));
  if (seconds < 60) return seconds + "s";
  const m = Math.floor(seconds / 60), s = seconds % 60;
  if (m < 60) return m + "m " + s + "s";
  return Math.floor(m / 60) + "h " + (m % 60) + "m";
}

// The scheduler's states, in the page's words.
function shownState(state) {
  switch (state) {
    case "ready": return "loaded";
    case "starting": return "loading";
    case "stopping": return "unloading";
    case "sleeping": return "sleeping";
    case "failed": case "backoff": case "fatal": return "failed";
    default: return "unloaded";
  }
}

function elapsed() { return (Date.now() - receivedAt) / 1000; }

function keepAliveText(model) {
  if (model.expires_in !== null && model.expires_in !== undefined) {
    return "unloads in " + duration(model.expires_in - elapsed());
  }
  if (model.state !== "ready" && model.state !== "sleeping") return "";
  if (model.keep_alive === null) return "never unloads";
  if (model.in_flight || model.waiting) return "busy; then " + duration(model.keep_alive);
  return duration(model.keep_alive);
}

function stateText(model) {
  const shown = shownState(model.state);
  if (shown === "loading" && model.seconds_in_state !== null) {
    return shown + " " + duration(model.seconds_in_state + elapsed());
  }
  return shown;
}

function memoryText(model) {
  return Object.entries(model.memory || {})
    .map(([device, size]) => device + " " + bytes(size)).join(", ") || "–";
}

// What a card is drawn from, less what `tick` updates in place: while it is unchanged the cards
// stay as they are, so a snapshot never replaces a button under the pointer mid-click.
function signature(model) {
  const fixed = Object.assign({}, model, { expires_in: null, seconds_in_state: null, memory: null });
  return JSON.stringify(fixed) + (busy.has(model.name) ? "busy" : "");
}

let drawn = "";

function modelCard(model) {
  const shown = shownState(model.state);
  const facts = el("dl", null,
    el("dt", null, "devices"), el("dd", null, (model.devices || []).join(", ") || "–"),
    el("dt", null, "memory"), el("dd", { class: "memory" }, memoryText(model)),
    el("dt", null, "requests"),
    el("dd", { class: "requests" }, model.in_flight + " in flight, " + model.waiting + " queued"),
    el("dt", null, "keep-alive"), el("dd", { class: "keep-alive" }, keepAliveText(model) || "–"));
  const running = shown === "loaded" || shown === "sleeping" || shown === "loading";
  const load = el("button", { type: "button", class: "load" }, "load");
  const unload = el("button", { type: "button", class: "unload" }, "unload");
  const logs = el("button", { type: "button", class: "logs" }, "log");
  load.disabled = busy.has(model.name) || shown === "loaded" || shown === "loading";
  unload.disabled = busy.has(model.name) || !running;
  load.addEventListener("click", () => act(model.name, false));
  unload.addEventListener("click", () => act(model.name, true));
  logs.addEventListener("click", () => showLogs(model.name));
  const card = el("div", { class: "card model", "data-name": model.name, "data-state": shown },
    el("h3", null, el("span", { class: "name" }, model.name),
      el("span", { class: "state", "data-state": shown }, stateText(model))),
    model.reason ? el("div", { class: "muted" }, model.reason) : null,
    facts,
    shown === "failed" && model.last_error.length
      ? el("pre", { class: "last-error" }, model.last_error.join("\n")) : null,
    el("div", { class: "buttons" }, load, unload, logs));
  return card;
}

function deviceCard(device) {
  const pct = (n) => (device.total ? (100 * n / device.total).toFixed(1) : 0) + "%";
  return el("div", { class: "card device", "data-id": device.id },
    el("h3", null, device.id),
    el("div", { class: "bar" },
      el("span", { class: "ours", style: "width:" + pct(device.vllama) }),
      el("span", { class: "others", style: "width:" + pct(device.others) })),
    el("dl", null,
      el("dt", null, "vllama"), el("dd", null, bytes(device.vllama)),
      el("dt", null, "others"), el("dd", null, bytes(device.others)),
      el("dt", null, "total"), el("dd", null, bytes(device.total))));
}

function requestRow(entry) {
  const ok = entry.status < 400;
  const when = new Date(entry.time * 1000).toLocaleTimeString();
  return el("li", { class: "request", "data-model": entry.model },
    el("span", { class: "muted" }, when),
    el("strong", null, entry.model),
    el("span", null, entry.method + " " + entry.endpoint),
    el("span", { class: ok ? "status-ok" : "status-bad" }, String(entry.status)),
    el("span", null, "ttft " + (entry.ttft === null ? "–" : Math.round(entry.ttft * 1000) + " ms")),
    el("span", null, (entry.tokens === null ? "–" : entry.tokens) + " tokens"),
    el("span", { class: "muted" },
      entry.seconds < 1 ? Math.round(entry.seconds * 1000) + " ms" : duration(entry.seconds)));
}

function render() {
  if (!snapshot) return;
  const shape = snapshot.models.map(signature).join("\n");
  if (shape !== drawn) {
    ui.models.replaceChildren(...snapshot.models.map(modelCard));
    drawn = shape;
    for (const pre of ui.models.querySelectorAll(".last-error")) {
      pre.scrollTop = pre.scrollHeight; // the last lines are the ones that say why
    }
  }
  tick();
  ui.devices.replaceChildren(...snapshot.devices.map(deviceCard));
  ui.queued.textContent = snapshot.queued ? snapshot.queued + " queued" : "";
}

function renderRecent() {
  ui.recent.replaceChildren(...recent.map(requestRow));
  if (!recent.length) ui.recent.append(el("li", { class: "muted" }, "none yet"));
}

function setConnection(state, text) {
  ui.connection.dataset.state = state;
  ui.connection.textContent = text;
}

function askForKey() {
  ui.keyForm.hidden = false;
  ui.key.focus();
}

ui.keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_ITEM, ui.key.value.trim());
  ui.key.value = "";
  ui.keyForm.hidden = true;
  connect();
});

async function act(name, unload) {
  busy.add(name);
  render();
  ui.actionError.hidden = true;
  const body = unload ? { model: name, keep_alive: 0 } : { model: name };
  try {
    const response = await fetch("/api/generate", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify(body),
    });
    if (response.status === 401) askForKey();
    if (!response.ok) {
      const text = await response.text();
      let message = text;
      try { message = JSON.parse(text).error || text; } catch (e) { /* not JSON */ }
      throw new Error((unload ? "unload " : "load ") + name + ": " + message);
    }
  } catch (error) {
    ui.actionError.textContent = error.message;
    ui.actionError.hidden = false;
  } finally {
    busy.delete(name);
    render();
  }
}

async function showLogs(name) {
  logsFor = name;
  ui.logsSection.hidden = false;
  ui.logsModel.textContent = name;
  const query = new URLSearchParams({ model: name, lines: "200" });
  try {
    const response = await fetch("/api/vllama/logs?" + query, { headers: headers() });
    const data = await response.json();
    if (response.status === 401) askForKey();
    ui.logs.textContent = response.ok
      ? (data.lines.join("\n") || "(no output yet)")
      : "cannot read the log: " + (data.error || response.status);
  } catch (error) {
    ui.logs.textContent = "cannot read the log: " + error.message;
  }
}

document.getElementById("logs-refresh").addEventListener("click", () => showLogs(logsFor));
document.getElementById("logs-close").addEventListener("click", () => {
  ui.logsSection.hidden = true;
  logsFor = null;
});

function handle(kind, data) {
  if (kind === "status") {
    snapshot = data;
    receivedAt = Date.now();
    if (recent.length === 0 && data.recent.length) {
      recent = data.recent.slice().reverse().slice(0, RECENT_MAX);
      renderRecent();
    }
    render();
  } else if (kind === "request") {
    recent.unshift(data);
    recent.length = Math.min(recent.length, RECENT_MAX);
    renderRecent();
  }
}

// Server-Sent Events over fetch: events are separated by a blank line; each has `event:` and
// `data:` lines.
async function connect() {
  setConnection("connecting", "connecting…");
  let response;
  try {
    response = await fetch("/api/vllama/events", { headers: headers({ Accept: "text/event-stream" }) });
  } catch (error) {
    return retry();
  }
  if (response.status === 401 || response.status === 403) {
    setConnection("lost", "API key needed");
    askForKey();
    return;
  }
  if (!response.ok || !response.body) return retry();
  setConnection("live", "live");
  recent = [];
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let kind = "message", data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) kind = line.slice(6).trim();
          else if (line.startsWith("data:")) data += line.slice(5).trim();
        }
        if (data) handle(kind, JSON.parse(data));
      }
    }
  } catch (error) {
    // the connection broke: fall through to retry
  }
  retry();
}

function retry() {
  setConnection("lost", "disconnected; retrying…");
  setTimeout(connect, RETRY_MS);
}

// Countdowns and "loading for" tick every second between snapshots; only their text changes, so
// a button being clicked is never replaced under the pointer.
function tick() {
  if (!snapshot) return;
  for (const model of snapshot.models) {
    const card = ui.models.querySelector('.model[data-name="' + CSS.escape(model.name) + '"]');
    if (!card) continue;
    card.querySelector(".state").textContent = stateText(model);
    card.querySelector(".keep-alive").textContent = keepAliveText(model) || "–";
    card.querySelector(".memory").textContent = memoryText(model);
  }
}

setInterval(tick, 1000);
renderRecent();
connect();
