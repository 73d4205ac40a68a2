// The dashboard page: rows and charts updated from server-sent events, no library.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const CHART_WIDTH = 120;
const CHART_HEIGHT = 36;
// The columns; the partition shows under the name and the lag in seconds under the lag, so
// the table fits a 1280 px window.
const FIELDS = [
  "name", "state", "owner", "position", "lag", "chart", "rate", "events_processed",
  "last_batch_seconds", "errors", "dead_letters", "last_error", "updated_at",
];
const NUMERIC = new Set([
  "position", "lag", "rate", "events_processed", "last_batch_seconds", "errors", "dead_letters",
]);

// key -> [[unix seconds, lag, lag_seconds, events/s], ...]
const charts = new Map();
let historySeconds = 600;

const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const decimal = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });

function isNumber(value) {
  return typeof value === "number" && Number.isFinite(value);
}

function formatCount(value) {
  return isNumber(value) ? integer.format(value) : "-";
}

function formatSeconds(value) {
  if (!isNumber(value)) return "-";
  if (value < 10) return value.toFixed(2) + " s";
  if (value < 120) return decimal.format(value) + " s";
  const minutes = Math.floor(value / 60);
  return minutes + "m " + Math.round(value - minutes * 60) + "s";
}

function formatRate(value) {
  if (!isNumber(value)) return "-";
  return value < 10 ? decimal.format(value) : integer.format(value);
}

function formatBatch(value) {
  if (!isNumber(value)) return "-";
  return value < 1 ? integer.format(value * 1000) + " ms" : value.toFixed(2) + " s";
}

function formatTime(iso) {
  if (!iso) return "-";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleTimeString("en-GB");
}

// The status says how much a state matters (its severity); the page never reads the words.
const SEVERITIES = new Set(["ok", "warn", "bad", "idle"]);

function stateClass(item) {
  return SEVERITIES.has(item.severity) ? item.severity : "idle";
}

function rowFor(key, tbody) {
  let row = tbody.querySelector(`tr[data-key="${CSS.escape(key)}"]`);
  if (row) return row;
  row = document.createElement("tr");
  row.dataset.key = key;
  for (const field of FIELDS) {
    const cell = document.createElement("td");
    cell.dataset.field = field;
    if (NUMERIC.has(field)) cell.classList.add("num");
    row.appendChild(cell);
  }
  tbody.appendChild(row);
  return row;
}

// A line of small text under a cell's value, named by its field.
function subline(field, text, className = "sub") {
  const span = document.createElement("span");
  span.className = className;
  span.dataset.field = field;
  span.textContent = text;
  return span;
}

function fillName(cell, item) {
  cell.replaceChildren(document.createTextNode(item.name ?? "?"));
  const version = isNumber(item.version) ? " · v" + item.version : "";
  cell.appendChild(subline("kind", `${item.kind ?? ""}${version}`, "kind"));
  if (item.partition) cell.appendChild(subline("partition", item.partition, "kind"));
}

// The fault that stopped the unit, as text: the event, the error, the traceback on demand.
function faultDetails(fault) {
  const details = document.createElement("details");
  details.className = "fault";
  const summary = document.createElement("summary");
  summary.textContent =
    `on ${fault.event_type} · ${fault.stream_id} v${fault.stream_version} · ${fault.position}`;
  const error = subline("fault_error", fault.error ?? "", "fault-error");
  const trace = document.createElement("pre");
  trace.dataset.field = "fault_traceback";
  trace.textContent = fault.traceback ?? "";
  details.append(summary, error, trace);
  return details;
}

function fill(row, item) {
  const cell = (field) => row.querySelector(`td[data-field="${field}"]`);
  const faultOpen = row.querySelector("details.fault")?.open ?? false;  // survives each poll
  fillName(cell("name"), item);

  const badge = document.createElement("span");
  badge.className = "state " + stateClass(item);
  badge.textContent = item.state_text ?? item.state ?? "unknown";
  const state = cell("state");
  state.replaceChildren(badge);
  if (item.held_back_by) {
    const held = document.createElement("span");
    held.className = "held";
    const waited = isNumber(item.held_back_seconds) && item.held_back_seconds > 0;
    const seconds = waited ? ` for ${formatSeconds(item.held_back_seconds)}` : "";
    held.textContent = `held back${seconds} by ${item.held_back_by}`;
    state.appendChild(held);
  }
  if (item.fault) {
    const details = faultDetails(item.fault);
    details.open = faultOpen;
    state.appendChild(details);
  }

  cell("owner").textContent = item.owner ?? "-";
  cell("owner").title = item.owner ?? "";
  cell("position").textContent = item.position ?? "-";
  cell("lag").replaceChildren(
    subline("lag_events", (item.lag_estimated ? "~" : "") + formatCount(item.lag), "main"),
    subline("lag_seconds", formatSeconds(item.lag_seconds)),
  );
  cell("rate").textContent = formatRate(item.rate);
  cell("events_processed").textContent = formatCount(item.events_processed);
  cell("last_batch_seconds").textContent = formatBatch(item.last_batch_seconds);
  cell("errors").textContent = formatCount(item.errors);
  cell("errors").classList.toggle("alert", isNumber(item.errors) && item.errors > 0);
  // Parked streams (on_error="park") under the dead letters they wait behind.
  const parked = isNumber(item.parked_streams) && item.parked_streams > 0;
  cell("dead_letters").replaceChildren(
    subline("dead_count", formatCount(item.dead_letters), "main"),
    ...(parked ? [subline("parked_streams", `${formatCount(item.parked_streams)} parked`)] : []),
  );
  cell("dead_letters").classList.toggle("alert", isNumber(item.dead_letters) && item.dead_letters > 0);
  const error = cell("last_error");
  error.textContent = item.last_error ?? "-";
  error.title = item.last_error ?? "";
  error.classList.toggle("error", Boolean(item.last_error));
  cell("updated_at").textContent = formatTime(item.updated_at);
  drawChart(cell("chart"), charts.get(item.key) ?? [], item);
}

// A polyline of one series scaled to the chart's height; null values break nothing, they
// are left out.
function polyline(samples, index, start, span, className) {
  const points = samples.filter((sample) => isNumber(sample[index]));
  if (points.length === 0) return null;
  const top = Math.max(...points.map((sample) => sample[index]), 1e-9);
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("class", className);
  line.setAttribute("points", points.map((sample) => {
    const x = ((sample[0] - start) / span) * (CHART_WIDTH - 2) + 1;
    const y = CHART_HEIGHT - 2 - (sample[index] / top) * (CHART_HEIGHT - 4);
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  }).join(" "));
  return { line, top };
}

function drawChart(cell, samples, item) {
  let svg = cell.querySelector("svg");
  if (!svg) {
    svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "chart");
    svg.setAttribute("width", CHART_WIDTH);
    svg.setAttribute("height", CHART_HEIGHT);
    svg.setAttribute("viewBox", `0 0 ${CHART_WIDTH} ${CHART_HEIGHT}`);
    svg.appendChild(document.createElementNS(SVG, "title"));
    cell.appendChild(svg);
  }
  const end = samples.length ? samples[samples.length - 1][0] : 0;
  const start = samples.length ? Math.max(samples[0][0], end - historySeconds) : 0;
  const span = Math.max(end - start, 1);
  for (const old of svg.querySelectorAll("polyline")) old.remove();
  const events = polyline(samples, 1, start, span, "events");
  const seconds = polyline(samples, 2, start, span, "seconds");
  if (events) svg.appendChild(events.line);
  if (seconds) svg.appendChild(seconds.line);
  svg.dataset.samples = String(samples.length);
  svg.querySelector("title").textContent =
    `${item.name}: peak lag ${events ? formatCount(events.top) : "-"} events` +
    `, ${seconds ? formatSeconds(seconds.top) : "-"} over the last ${Math.round(span)} s`;
}

function record(payload) {
  const at = payload.at;
  if (!isNumber(at)) return;
  for (const item of payload.projections) {
    const samples = charts.get(item.key) ?? [];
    if (!samples.length || samples[samples.length - 1][0] < at) {
      samples.push([at, item.lag ?? null, item.lag_seconds ?? null, item.rate ?? null]);
    }
    while (samples.length && samples[0][0] < at - historySeconds) samples.shift();
    charts.set(item.key, samples);
  }
}

function render(payload) {
  const banner = document.getElementById("poll-error");
  banner.hidden = !payload.error;
  banner.textContent = payload.error ? "Status unavailable: " + payload.error : "";
  const tbody = document.querySelector("#projections tbody");
  const keys = new Set();
  for (const item of payload.projections) {
    keys.add(item.key);
    fill(rowFor(item.key, tbody), item);
  }
  for (const row of [...tbody.rows]) {
    if (!keys.has(row.dataset.key)) {
      charts.delete(row.dataset.key);
      row.remove();
    }
  }
  document.getElementById("empty").hidden = payload.projections.length > 0;
  summarize(payload);
}

function sum(items, field) {
  let total = null;
  for (const item of items) {
    if (isNumber(item[field])) total = (total ?? 0) + item[field];
  }
  return total;
}

function renderWorkers(workers) {
  const list = document.getElementById("workers");
  list.replaceChildren(...workers.map((worker) => {
    const entry = document.createElement("li");
    entry.dataset.worker = worker.id;
    entry.textContent = `${worker.id} · heartbeat ${formatSeconds(worker.heartbeat_seconds)} ago` +
      ` · ${formatCount(worker.units)} unit${worker.units === 1 ? "" : "s"}`;
    return entry;
  }));
  document.getElementById("no-workers").hidden = workers.length > 0;
  document.getElementById("worker-count").textContent = String(workers.length);
}

function summarize(payload) {
  const items = payload.projections;
  const heads = items.map((item) => item.head).filter(Boolean);
  document.getElementById("head").textContent = heads.length ? heads[0] : "-";
  document.getElementById("count").textContent = String(items.length);
  document.getElementById("behind").textContent =
    String(items.filter((item) => isNumber(item.lag) && item.lag > 0).length);
  const faulted = items.filter((item) => item.state === "faulted").length;
  document.getElementById("faulted").textContent = String(faulted);
  document.getElementById("faulted-tile").classList.toggle("bad", faulted > 0);
  renderWorkers(Array.isArray(payload.workers) ? payload.workers : []);
  document.getElementById("total-rate").textContent = formatRate(sum(items, "rate"));
  document.getElementById("total-errors").textContent = formatCount(sum(items, "errors"));
  document.getElementById("total-dead").textContent = formatCount(sum(items, "dead_letters"));
  document.getElementById("updated").textContent =
    isNumber(payload.at) ? new Date(payload.at * 1000).toLocaleTimeString("en-GB") : "-";
}

function setConnection(text, className) {
  const badge = document.getElementById("connection");
  badge.textContent = text;
  badge.className = "connection " + className;
}

function connect() {
  // EventSource reconnects by itself; each connection starts with a full snapshot.
  const source = new EventSource("events");
  source.addEventListener("snapshot", (message) => {
    const payload = JSON.parse(message.data);
    if (isNumber(payload.history_seconds)) historySeconds = payload.history_seconds;
    document.getElementById("window").textContent = String(Math.round(historySeconds / 60));
    charts.clear();
    for (const [key, samples] of Object.entries(payload.charts ?? {})) charts.set(key, samples);
    render(payload);
    setConnection("live", "live");
  });
  source.addEventListener("status", (message) => {
    const payload = JSON.parse(message.data);
    record(payload);
    render(payload);
    setConnection("live", "live");
  });
  source.addEventListener("error", () => setConnection("reconnecting", "lost"));
}

connect();
