// The fairgate console: plain JS over the admin API, no build step. Every value from the API
// is written with textContent (or as an SVG attribute number), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const PAGE_SIZE = 20;
const AUTO_REFRESH_MS = 10000;
const SVG = "http://www.w3.org/2000/svg";
let token = sessionStorage.getItem("fairgate-admin-token");
let selected = null;
let autoRefresh = null;
// What the last refresh loaded; filters and paging re-render from it without asking again.
const loaded = { customers: [], usage: {}, findings: [], grants: [], detail: null };
const pages = { customers: 0, findings: 0 };

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function button(text, className, onClick) {
  const node = element("button", text, className);
  node.type = "button";
  node.addEventListener("click", onClick);
  return node;
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json", ...(options.headers || {}) },
  });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) {
    sessionStorage.removeItem("fairgate-admin-token");
    token = null;
    showSignIn("That token was not accepted.");
    throw new Error("unauthorized");
  }
  if (!response.ok) throw new Error(body.detail || `${response.status} ${response.statusText}`);
  return body;
}

function say(text) { $("message").textContent = text || ""; }

function showSignIn(text) {
  $("sign-in").hidden = false;
  $("main").hidden = true;
  $("controls").hidden = true;
  stopAutoRefresh();
  say(text);
}

// -- units --------------------------------------------------------------------------------

function number(value, digits = 2) {
  return Number(value).toLocaleString("en", { maximumFractionDigits: digits });
}

function bytes(value) {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let amount = Number(value);
  let unit = 0;
  while (Math.abs(amount) >= 1000 && unit < units.length - 1) { amount /= 1000; unit += 1; }
  return `${number(amount, unit ? 1 : 0)} ${units[unit]}`;
}

function duration(seconds) {
  const value = Number(seconds);
  if (value < 60) return `${number(value, value < 1 ? 3 : 1)} s`;
  if (value < 3600) return `${number(value / 60, 1)} min`;
  return `${number(value / 3600, 1)} h`;
}

// A quota's or a day's amount in the unit of its metric (quota metrics: requests, bytes,
// upstream_seconds; per-day metrics: units, requests, bytes, bytes_in, bytes_out, upstream_seconds).
function amount(metric, value) {
  if (metric === "upstream_seconds") return duration(value);
  if (metric.startsWith("bytes")) return bytes(value);
  return `${number(value, 0)} requests`;
}

function dayAmount(metric, day) {
  if (metric === "bytes") return (day.bytes_in || 0) + (day.bytes_out || 0);
  return day[metric] || 0;
}

function when(seconds) { return new Date(seconds * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z"); }

// -- filters and paging --------------------------------------------------------------------

function filters() {
  return { customer: $("filter-customer").value.trim().toLowerCase(), state: $("filter-state").value,
    detector: $("filter-detector").value };
}

function matchesCustomer(text, wanted) { return !wanted || String(text || "").toLowerCase().includes(wanted); }

function pager(id, key, total, render) {
  const node = $(id);
  node.replaceChildren();
  const pageCount = Math.max(1, Math.ceil(total / PAGE_SIZE));
  pages[key] = Math.min(pages[key], pageCount - 1);
  const first = pages[key] * PAGE_SIZE;
  node.append(element("span", total ? `${first + 1}–${Math.min(total, first + PAGE_SIZE)} of ${total}` : "none", "muted"));
  const previous = button("Previous", "previous", () => { pages[key] -= 1; render(); });
  previous.disabled = pages[key] === 0;
  const next = button("Next", "next", () => { pages[key] += 1; render(); });
  next.disabled = pages[key] >= pageCount - 1;
  node.append(" ", previous, " ", next);
  return first;
}

// -- customers -----------------------------------------------------------------------------

function quotaRow(quota) {
  const row = element("div", null, "quota");
  const bar = element("progress");
  bar.max = quota.quota;
  bar.value = Math.min(quota.used, quota.quota);
  // Requests read best as "12 / 100,000 requests"; seconds and bytes each in their own scale.
  const used = quota.metric === "requests" ? number(quota.used, 0) : amount(quota.metric, quota.used);
  const period = quota.period === "month" ? "" : ` a ${quota.period}`;
  const text = element("span", `${used} / ${amount(quota.metric, quota.quota)}${period}`, quota.over > 0 ? "over" : "");
  text.title = `${number(quota.used, 6)} of ${number(quota.quota, 6)} (${quota.metric}, per ${quota.period})`;
  row.append(element("span", quota.limit, "quota-name"), bar, text);
  if (quota.over > 0) row.append(element("span", "OVER", "over"));
  return row;
}

function quotaBars(usage) {
  const cell = element("td");
  if (!usage || !usage.quotas.length) {
    cell.append(element("span", usage ? `${number(usage.requests, 0)} requests` : "no usage yet", "muted"));
    return cell;
  }
  for (const quota of usage.quotas) cell.append(quotaRow(quota));
  return cell;
}

function stateCell(customer) {
  const cell = element("td");
  cell.append(element("span", customer.state, `state state-${customer.state}`));
  if (customer.until) cell.append(element("div", `until ${when(customer.until)}`, "muted"));
  if (customer.reason) cell.append(element("div", customer.reason, "muted"));
  for (const advice of customer.advice ?? []) cell.append(element("div", advice, "advice muted"));
  return cell;
}

function customerRow(customer) {
  const row = element("tr");
  row.dataset.customer = customer.id;
  const actions = element("td", null, "actions");
  const reinstate = button("Reinstate", "reinstate", () => reinstateCustomer(customer.id));
  reinstate.disabled = customer.state === "ok";
  actions.append(button("Timeline", "show-timeline", () => showDetail(customer.id)), " ", reinstate);
  row.append(element("td", customer.id), element("td", customer.plan ?? "-"), stateCell(customer),
    element("td", number(customer.findings || 0, 0), "count"), quotaBars(loaded.usage[customer.id]), actions);
  return row;
}

function renderCustomers() {
  const wanted = filters();
  const shown = loaded.customers.filter((c) => matchesCustomer(c.id, wanted.customer)
    && (!wanted.state || c.state === wanted.state));
  const first = pager("customers-pager", "customers", shown.length, renderCustomers);
  const body = $("customers").tBodies[0];
  body.replaceChildren(...shown.slice(first, first + PAGE_SIZE).map(customerRow));
  if (!shown.length) body.append(emptyRow(6, "No customer matches."));
}

function emptyRow(columns, text) {
  const row = element("tr");
  const cell = element("td", text, "muted");
  cell.colSpan = columns;
  row.append(cell);
  return row;
}

async function loadCustomers() {
  const [{ customers }, usage] = await Promise.all([api("/admin/customers"), api("/admin/usage")]);
  $("month").textContent = usage.month;
  loaded.customers = customers;
  loaded.usage = Object.fromEntries(usage.customers.map((row) => [row.customer, row]));
  loaded.month = usage.month;
}

async function reinstateCustomer(id) {
  try {
    await api(`/admin/customers/${encodeURIComponent(id)}/reinstate`, {
      method: "POST", body: JSON.stringify({ by: "console", note: "reinstated from the console" }),
    });
    say(`${id} reinstated.`);
    await refresh();
  } catch (error) { say(`Reinstating ${id} failed: ${error.message}`); }
}

async function suspendCustomer(form) {
  const data = new FormData(form);
  try {
    await api(`/admin/customers/${encodeURIComponent(selected)}/suspend`, {
      method: "POST", body: JSON.stringify({ reason: data.get("reason"), for: data.get("for"), by: "console" }),
    });
    say(`${selected} suspended.`);
    form.reset();
    await refresh();
  } catch (error) { say(`Suspending ${selected} failed: ${error.message}`); }
}

// -- findings ------------------------------------------------------------------------------

function evidenceList(evidence) {
  const list = element("dl", null, "evidence");
  for (const [key, value] of Object.entries(evidence || {})) {
    list.append(element("dt", key), element("dd", typeof value === "string" ? value : JSON.stringify(value)));
  }
  return list;
}

function signalList(signals) {
  const list = element("ul", null, "signals");
  for (const signal of signals || []) list.append(element("li", signal, "signal"));
  return list;
}

function findingRow(finding) {
  const row = element("tr");
  row.dataset.detector = finding.detector;
  row.dataset.customer = finding.customer || "";
  const evidence = element("details");
  evidence.append(element("summary", `${Object.keys(finding.evidence || {}).length} items`), evidenceList(finding.evidence));
  const action = element("td", finding.action);
  if (finding.shadow) action.append(element("div", "shadow: not applied", "muted"));
  if (finding.until) action.append(element("div", `until ${when(finding.until)}`, "muted"));
  const signals = element("td");
  signals.append(signalList(finding.signals));
  const evidenceCell = element("td");
  evidenceCell.append(evidence);
  row.append(element("td", when(finding.at), "time"), element("td", finding.detector), element("td", finding.subject), action,
    element("td", finding.score === null || finding.score === undefined ? "-" : number(finding.score)),
    signals, evidenceCell);
  return row;
}

function renderFindings() {
  const wanted = filters();
  const shown = loaded.findings.filter((f) => (matchesCustomer(f.customer, wanted.customer)
      || matchesCustomer(f.subject, wanted.customer))
    && (!wanted.detector || f.detector === wanted.detector)).reverse();  // newest first
  const first = pager("findings-pager", "findings", shown.length, renderFindings);
  const body = $("findings").tBodies[0];
  body.replaceChildren(...shown.slice(first, first + PAGE_SIZE).map(findingRow));
  if (!shown.length) body.append(emptyRow(7, "No finding matches."));
}

function updateDetectorFilter() {
  const select = $("filter-detector");
  const known = new Set([...select.options].map((option) => option.value));
  for (const detector of new Set(loaded.findings.map((f) => f.detector))) {
    if (known.has(detector)) continue;
    const option = element("option", detector);
    option.value = detector;
    select.append(option);
  }
}

async function loadFindings() {
  loaded.findings = (await api("/admin/findings")).findings;
  updateDetectorFilter();
}

// -- exceptions ----------------------------------------------------------------------------

function grantText(grant) {
  if (grant.kind === "override") {
    const { limit, ...changes } = grant.override;
    return `${limit}: ${Object.entries(changes).map(([key, value]) => `${key} ${value}`).join(", ")}`;
  }
  if (grant.kind === "exempt") return `exempt from ${grant.exempt}`;
  if (grant.kind === "allow_user") return `allow-listed user ${grant.user}`;
  return `allow-listed user agent "${grant.agent}"`;
}

function renderExceptions() {
  const wanted = filters();
  const body = $("exceptions").tBodies[0];
  const shown = loaded.grants.filter((g) => matchesCustomer(g.customer ?? "every customer", wanted.customer));
  body.replaceChildren(...shown.map((grant) => {
    const row = element("tr");
    row.dataset.grant = grant.id;
    const actions = element("td");
    actions.append(button("Revoke", "revoke", () => revokeGrant(grant)));
    row.append(element("td", grant.customer ?? "every customer"), element("td", grantText(grant)),
      element("td", when(grant.until)), element("td", grant.by), element("td", grant.reason), actions);
    return row;
  }));
  if (!shown.length) body.append(emptyRow(6, "No exception in force."));
}

async function loadExceptions() { loaded.grants = (await api("/admin/exceptions")).grants; }

async function revokeGrant(grant) {
  try {
    await api(`/admin/exceptions/${encodeURIComponent(grant.id)}`, {
      method: "DELETE", body: JSON.stringify({ by: "console" }),
    });
    say(`Revoked: ${grantText(grant)}${grant.customer ? ` for ${grant.customer}` : ""}.`);
    await refresh();
  } catch (error) { say(`Revoking failed: ${error.message}`); }
}

async function grantException(form) {
  const data = new FormData(form);
  const body = { for: data.get("for"), reason: data.get("reason"), by: "console" };
  if (data.get("exempt")) {
    body.exempt = data.get("exempt");
  } else {
    body.limit = data.get("limit");
    const value = String(data.get("value"));
    body[data.get("field")] = data.get("field") === "rate" ? value : Number(value);
  }
  try {
    await api(`/admin/customers/${encodeURIComponent(selected)}/exceptions`, {
      method: "POST", body: JSON.stringify(body),
    });
    say(`Exception granted to ${selected}.`);
    form.reset();
    await refresh();
  } catch (error) { say(`The exception was refused: ${error.message}`); }
}

// -- one customer: usage chart, quotas, refusals, timeline ----------------------------------

function svg(tag, attributes, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function daysOf(month) {
  const [year, monthNumber] = month.split("-").map(Number);
  const count = new Date(Date.UTC(year, monthNumber, 0)).getUTCDate();
  return Array.from({ length: count }, (_, index) => `${month}-${String(index + 1).padStart(2, "0")}`);
}

// One bar per day of the month that has usage, scaled to the busiest day; a day's value is in
// the bar's tooltip.
function usageChart(month, days, metric) {
  const dates = daysOf(month);
  const width = 640, height = 180, left = 64, bottom = 22, top = 10;
  const slot = (width - left) / dates.length;
  const values = dates.map((date) => (days[date] ? dayAmount(metric, days[date]) : 0));
  const peak = Math.max(...values, 0);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img" });
  chart.append(svg("title", {}, `Usage per day in ${month}`));
  chart.append(svg("line", { x1: left, y1: height - bottom, x2: width, y2: height - bottom, class: "axis" }));
  chart.append(svg("text", { x: left - 6, y: top + 8, "text-anchor": "end", class: "label" }, peak ? amount(metric, peak) : ""));
  chart.append(svg("text", { x: left - 6, y: height - bottom, "text-anchor": "end", class: "label" }, "0"));
  dates.forEach((date, index) => {
    const x = left + index * slot;
    if (index % 5 === 0 || index === dates.length - 1) {
      chart.append(svg("text", { x: x + slot / 2, y: height - 6, "text-anchor": "middle", class: "label" }, index + 1));
    }
    if (!days[date]) return;
    const barHeight = peak ? Math.max(1, (values[index] / peak) * (height - bottom - top)) : 1;
    const bar = svg("rect", { x: x + 1, y: height - bottom - barHeight, width: Math.max(1, slot - 2), height: barHeight,
      class: "bar", "data-day": date });
    bar.append(svg("title", {}, `${date}: ${amount(metric, values[index])}`));
    chart.append(bar);
  });
  return chart;
}

function renderChart() {
  const detail = loaded.detail;
  const holder = $("usage-chart");
  holder.replaceChildren();
  if (!detail) return;
  const days = detail.usage ? detail.usage.days : {};
  holder.append(usageChart(detail.usage ? detail.usage.month : loaded.month, days, $("chart-metric").value));
  if (!Object.keys(days).length) holder.append(element("p", "No usage this month yet.", "muted"));
}

function countsRows(table, counts, empty) {
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const [name, count] of Object.entries(counts || {})) {
    const row = element("tr");
    row.append(element("th", name), element("td", number(count, 0), "count"));
    body.append(row);
  }
  if (!body.rows.length) body.append(emptyRow(2, empty));
}

function describe(event) {
  switch (event.kind) {
    case "state_change": return `${event.subject}: ${event.previous} → ${event.state} (${event.reason}) by ${event.by}`;
    case "finding": return `${event.detector} finding on ${event.subject}: ${event.action} (${(event.signals || []).join(", ")})`;
    case "violation": {
      const count = event.count || 1;
      return `${number(count, 0)} ${count === 1 ? "violation" : "violations"} (${event.violation}, ${event.severity}): ${event.reason}`;
    }
    case "admin_action": return `${event.action} by ${event.by}${event.note ? `: ${event.note}` : ""}${event.reason ? `: ${event.reason}` : ""}`;
    default: return event.kind;
  }
}

function timelineItem(event) {
  const item = element("li");
  item.dataset.kind = event.kind;
  item.append(element("time", when(event.at)), " ", element("strong", describe(event)));
  const { seq, at, kind, ...rest } = event;
  const evidence = element("details");
  evidence.append(element("summary", "details"), evidenceList(rest));
  item.append(evidence);
  return item;
}

function renderDetail() {
  const customer = loaded.detail;
  if (!customer) return;
  $("detail").hidden = false;
  $("detail-name").textContent = customer.id;
  renderChart();
  const quotas = $("detail-quotas");
  quotas.replaceChildren(...(customer.usage ? customer.usage.quotas.map(quotaRow) : []));
  if (!quotas.children.length) quotas.append(element("p", "No quota in this plan.", "muted"));
  countsRows($("rejected"), customer.usage ? customer.usage.rejected : {}, "None.");
  const list = $("timeline");
  const events = [...customer.events].sort((a, b) => b.at - a.at);
  list.replaceChildren(...events.map(timelineItem));
  if (!events.length) list.append(element("li", "No events yet.", "muted"));
}

async function loadDetail() {
  loaded.detail = selected ? await api(`/admin/customers/${encodeURIComponent(selected)}`) : null;
}

async function showDetail(id) {
  selected = id;
  try {
    await loadDetail();
    renderDetail();
    $("detail").scrollIntoView();
  } catch (error) { say(`Loading ${id} failed: ${error.message}`); }
}

// -- refreshing ----------------------------------------------------------------------------

function render() {
  renderCustomers();
  renderFindings();
  renderExceptions();
  renderDetail();
}

async function refresh() {
  await Promise.all([loadCustomers(), loadFindings(), loadExceptions(), loadDetail()]);
  render();
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

function stopAutoRefresh() {
  if (autoRefresh !== null) clearInterval(autoRefresh);
  autoRefresh = null;
}

function startAutoRefresh() {
  stopAutoRefresh();
  autoRefresh = setInterval(() => refresh().catch((error) => say(`Refreshing failed: ${error.message}`)), AUTO_REFRESH_MS);
}

async function start() {
  $("sign-in").hidden = true;
  $("main").hidden = false;
  $("controls").hidden = false;
  if ($("auto-refresh").checked) startAutoRefresh();
  try { await refresh(); } catch (error) { if (token) say(`Loading failed: ${error.message}`); }
}

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("token").value;
    sessionStorage.setItem("fairgate-admin-token", token);
    say("");
    start();
  });
  $("refresh").addEventListener("click", () => refresh().catch((error) => say(error.message)));
  $("auto-refresh").addEventListener("change", (event) => {
    if (event.target.checked) startAutoRefresh(); else stopAutoRefresh();
  });
  $("filters").addEventListener("submit", (event) => event.preventDefault());
  for (const id of ["filter-customer", "filter-state", "filter-detector"]) {
    $(id).addEventListener("input", () => {
      pages.customers = pages.findings = 0;
      renderCustomers();
      renderFindings();
      renderExceptions();
    });
  }
  $("chart-metric").addEventListener("change", renderChart);
  $("suspend").addEventListener("submit", (event) => {
    event.preventDefault();
    suspendCustomer(event.target);
  });
  $("exception").addEventListener("submit", (event) => {
    event.preventDefault();
    grantException(event.target);
  });
  if (token) start(); else showSignIn();
});
