// Orchard's dashboard: polls /orchard/dashboard.json every second and draws it. No framework, no build step,
// nothing from another origin. Data is put into the page as text only (never as HTML).
"use strict";

const POLL_MS = 1000;
const HISTORY = 300; // points per chart: five minutes at one a second
const KEY_SLOT = "orchard-admin-key";
const series = { tokens: [], ttft: [] };
let keyNeeded = false; // keys are on: never fetch without one (each refused fetch is a console error)

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

function gib(bytes) {
  return bytes ? `${Math.round(bytes / 2 ** 30)} GiB` : "?";
}

// The router sends SI units (seconds); they become milliseconds only here, where they are shown.
const ms = (seconds) => Math.round(seconds * 10000) / 10;

function hostCard(w) {
  const look = w.down ? " down" : w.state !== "ready" || w.draining ? " busy" : "";
  const card = el("div", { class: "card" + look, "data-worker": w.worker_id, "data-state": w.state });
  let state = w.state + (w.draining ? ", draining" : "");
  if (w.detail && w.state !== "ready") state += `: ${w.detail}`;
  const kv = Math.round((w.load.kv_cache_usage || 0) * 100);
  const used = w.memory_available_bytes ? w.memory_bytes - w.memory_available_bytes : null;
  const usedPct = used == null || !w.memory_bytes ? 0 : Math.round((used / w.memory_bytes) * 100);
  card.append(
    el("h3", {}, w.host || w.worker_id),
    el("div", { class: "state" }, state),
    el("div", { class: "muted" }, `${w.chip || "?"} · ${w.os || "?"}`),
    el("div", { class: "bar", title: `memory ${usedPct}% used` }, el("div", { class: "mem", style: `width:${usedPct}%` })),
    el("div", { class: "muted" }, used == null ? `memory ${gib(w.memory_bytes)}` : `memory ${gib(used)} of ${gib(w.memory_bytes)} used`),
    el("div", {}, `${w.engine || "?"}: ${w.models.join(", ") || "no model"}`),
    ...(w.group ? [el("div", { class: "muted" },
      `shard group ${w.group.name}: ${w.group.mode} over ${w.group.size} hosts (${w.group.peers.join(", ")})`)] : []),
    el("div", { class: "bar", title: `KV cache ${kv}%` }, el("div", { style: `width:${kv}%` })),
    el("div", { class: "muted" }, `KV cache ${kv}% · in flight ${w.inflight} · running ${w.load.running} · waiting ${w.load.waiting}`),
    el("div", { class: "muted" },
      `${w.tokens_per_s.toFixed(1)} tok/s · TTFT p50 ${w.ttft_p50_s == null ? "–" : ms(w.ttft_p50_s) + " ms"} · ` +
      `restarts ${w.engine_restarts} · breaker ${w.breaker}`),
    el("div", { class: "muted" }, `${w.worker_id} @ ${w.address}`),
  );
  return card;
}

function rows(tbody, items, cells) {
  tbody.replaceChildren(...items.map((item) => el("tr", {}, ...cells(item).map((c) =>
    typeof c === "number" ? el("td", { class: "num" }, c.toLocaleString()) : el("td", {}, c)))));
}

function median(values) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function push(name, value) {
  series[name].push(value);
  if (series[name].length > HISTORY) series[name].shift();
}

function drawChart(canvas, values) {
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  ctx.clearRect(0, 0, width, height);
  const known = values.filter((v) => v != null);
  const top = Math.max(1, ...known) * 1.1;
  ctx.strokeStyle = "#e2e8f0";
  ctx.beginPath();
  ctx.moveTo(0, height - 0.5);
  ctx.lineTo(width, height - 0.5);
  ctx.stroke();
  ctx.fillStyle = "#718096";
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillText(top.toFixed(top < 10 ? 1 : 0), 4, 12);
  ctx.strokeStyle = "#3182ce";
  ctx.lineWidth = 2;
  ctx.beginPath();
  let drawing = false;
  values.forEach((v, i) => {
    const x = (i / (HISTORY - 1)) * width;
    if (v == null) { drawing = false; return; }
    const y = height - (v / top) * (height - 16);
    if (drawing) ctx.lineTo(x, y); else ctx.moveTo(x, y);
    drawing = true;
  });
  ctx.stroke();
}

function draw(data) {
  const workers = data.workers;
  document.getElementById("hosts").replaceChildren(...workers.map(hostCard));
  const ready = workers.filter((w) => w.state === "ready").length;
  const tokens = workers.reduce((sum, w) => sum + (w.tokens_per_s || 0), 0);
  const ttft = median(workers.filter((w) => w.ttft_p50_s != null).map((w) => ms(w.ttft_p50_s)));
  push("tokens", tokens);
  push("ttft", ttft);
  drawChart(document.getElementById("chart-tokens"), series.tokens);
  drawChart(document.getElementById("chart-ttft"), series.ttft);
  document.getElementById("now-tokens").textContent = `now ${tokens.toFixed(1)} tok/s`;
  document.getElementById("now-ttft").textContent = ttft == null ? "no stream in the last minute" : `now ${ttft} ms`;
  rows(document.getElementById("models"), data.models, (m) =>
    [m.name, `${m.ready} of ${m.workers.length}`, m.workers.join(", "), m.groups.join(", ") || "–", data.queued[m.name] || 0]);
  const onDemand = data.on_demand || [];
  document.getElementById("on-demand-section").hidden = onDemand.length === 0;
  rows(document.getElementById("on-demand"), onDemand, (d) =>
    [d.model, d.host || "–", d.state, d.inflight, d.waiting, d.idle_s == null ? "never used" : `${Math.round(d.idle_s)} s`,
     `${d.need_gb.toFixed(1)} GB`]);
  rows(document.getElementById("teams"), data.teams, (t) =>
    [t.team, t.requests, t.errors, t.prompt_tokens, t.completion_tokens]);
  rows(document.getElementById("errors"), data.errors, (e) =>
    [new Date(e.at * 1000).toLocaleTimeString(), `${e.status} ${e.reason}`, e.model, e.worker || "–", e.team || "–", e.request_id]);
  document.getElementById("status").textContent =
    `${ready} of ${workers.length} workers ready · updated ${new Date(data.at * 1000).toLocaleTimeString()}`;
}

function askForKey(why) {
  document.getElementById("login").hidden = false;
  document.getElementById("status").textContent = why;
}

async function poll() {
  const key = sessionStorage.getItem(KEY_SLOT);
  if (!key && keyNeeded) {
    askForKey("an admin key is needed"); // asked before fetching: a refused fetch would be a console error
    return;
  }
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  try {
    const response = await fetch("/orchard/dashboard.json", { headers, cache: "no-store" });
    if (response.status === 401 || response.status === 403) {
      sessionStorage.removeItem(KEY_SLOT);
      keyNeeded = true;
      askForKey(response.status === 401 ? "that key is not known" : "that key is not an admin key");
      return;
    }
    if (!response.ok) throw new Error(`the router answered ${response.status}`);
    document.getElementById("login").hidden = true;
    draw(await response.json());
  } catch (err) {
    document.getElementById("status").textContent = `cannot reach the router (${err.message}); retrying`;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_SLOT, document.getElementById("key").value.trim());
    poll();
  });
  keyNeeded = document.body.dataset.keyNeeded === "true";
  (async function every() { // one poll at a time, in order
    await poll();
    setTimeout(every, POLL_MS);
  })();
});
