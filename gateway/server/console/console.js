// The fairgate console: plain JS over the admin API, no build step. Every value from the API
// is written with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("fairgate-admin-token");
let selected = null;

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
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
  $("refresh").hidden = true;
  say(text);
}

function quotaBars(usage) {
  const cell = element("td");
  if (!usage || !usage.quotas.length) {
    cell.append(element("span", usage ? `${usage.requests} requests` : "no usage yet", "muted"));
    return cell;
  }
  for (const quota of usage.quotas) {
    const row = element("div", null, "quota");
    const bar = element("progress");
    bar.max = quota.quota;
    bar.value = Math.min(quota.used, quota.quota);
    row.append(element("span", quota.limit), bar,
      element("span", `${quota.used.toLocaleString()} / ${quota.quota.toLocaleString()}`,
        quota.over > 0 ? "over" : ""));
    if (quota.over > 0) row.append(element("span", "OVER", "over"));
    cell.append(row);
  }
  return cell;
}

async function loadCustomers() {
  const [{ customers }, usage] = await Promise.all([api("/admin/customers"), api("/admin/usage")]);
  $("month").textContent = usage.month;
  const byCustomer = Object.fromEntries(usage.customers.map((row) => [row.customer, row]));
  const body = $("customers").tBodies[0];
  body.replaceChildren();
  for (const customer of customers) {
    const row = element("tr");
    row.dataset.customer = customer.id;
    const state = element("td");
    state.append(element("span", customer.state, `state state-${customer.state}`));
    if (customer.until) state.append(element("div", `until ${new Date(customer.until * 1000).toISOString()}`, "muted"));
    if (customer.reason) state.append(element("div", customer.reason, "muted"));
    for (const advice of customer.advice ?? []) state.append(element("div", advice, "advice muted"));
    const actions = element("td");
    const reinstate = element("button", "Reinstate", "reinstate");
    reinstate.type = "button";
    reinstate.disabled = customer.state === "ok";
    reinstate.addEventListener("click", () => reinstateCustomer(customer.id));
    const timeline = element("button", "Timeline", "show-timeline");
    timeline.type = "button";
    timeline.addEventListener("click", () => showTimeline(customer.id));
    actions.append(reinstate, " ", timeline);
    row.append(element("td", customer.id), element("td", customer.plan ?? "-"), state,
      quotaBars(byCustomer[customer.id]), actions);
    body.append(row);
  }
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

function describe(event) {
  switch (event.kind) {
    case "state_change": return `${event.subject}: ${event.previous} → ${event.state} (${event.reason}) by ${event.by}`;
    case "finding": return `${event.detector} finding on ${event.subject}: ${event.action} (${(event.signals || []).join(", ")})`;
    case "violation": return `violation (${event.violation}): ${event.reason}`;
    case "admin_action": return `${event.action} by ${event.by}${event.note ? `: ${event.note}` : ""}${event.reason ? `: ${event.reason}` : ""}`;
    default: return event.kind;
  }
}

async function showTimeline(id) {
  selected = id;
  const customer = await api(`/admin/customers/${encodeURIComponent(id)}`);
  $("detail").hidden = false;
  $("detail-name").textContent = id;
  const list = $("timeline");
  list.replaceChildren();
  const events = [...customer.events].sort((a, b) => b.at - a.at);
  if (!events.length) list.append(element("li", "No events yet.", "muted"));
  for (const event of events) {
    const item = element("li");
    item.dataset.kind = event.kind;
    item.append(element("time", new Date(event.at * 1000).toISOString()), " ", element("strong", describe(event)));
    const evidence = element("details");
    evidence.append(element("summary", "evidence"), element("pre", JSON.stringify(event, null, 2)));
    item.append(evidence);
    list.append(item);
  }
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

async function refresh() {
  await loadCustomers();
  if (selected) await showTimeline(selected);
}

async function start() {
  $("sign-in").hidden = true;
  $("main").hidden = false;
  $("refresh").hidden = false;
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
  $("exception").addEventListener("submit", (event) => {
    event.preventDefault();
    grantException(event.target);
  });
  if (token) start(); else showSignIn();
});
