// centinela's dashboard: reads the admin API every 2 s (/-/overview) and every
// 10 s (history, whose points are 10 s apart), and draws with uPlot. No
// framework, no build step: this file is embedded in the binary as is.
"use strict";

const STATE_EVERY_MS = 2000;
const HISTORY_EVERY_MS = 10000;
let range = 3600;
let upstreamNames = [];
const charts = new Map(); // "upstream/kind" -> uPlot

function $(id) { return document.getElementById(id); }

// An element with attributes and children (strings become text nodes, so
// nothing from the API is ever parsed as HTML).
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c !== undefined && c !== null) e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function badge(state) { return el("span", { class: "badge " + state }, state); }

async function api(path) {
  const r = await fetch(path, { headers: { Accept: "application/json" }, credentials: "same-origin" });
  if (r.status === 401) {
    // The cookie expired or the token changed: the page is the login form.
    location.reload();
    throw new Error("not logged in");
  }
  if (!r.ok) throw new Error(path + " answered " + r.status);
  return r.json();
}

function fmtDuration(s) {
  if (s < 60) return Math.round(s) + " s";
  if (s < 3600) return Math.round(s / 60) + " min";
  if (s < 86400) return (s / 3600).toFixed(1) + " h";
  return (s / 86400).toFixed(1) + " d";
}

function fmtBytes(b) {
  if (b >= 1 << 30) return (b / (1 << 30)).toFixed(1) + " GiB";
  if (b >= 1 << 20) return (b / (1 << 20)).toFixed(1) + " MiB";
  return Math.round(b / 1024) + " KiB";
}

function showError(msg) {
  const f = $("error");
  f.hidden = !msg;
  f.textContent = msg || "";
}

// ---- state: every 2 s ----

async function refreshState() {
  // One request: the detailed health, the alerts and the services.
  const o = await api("/-/overview");
  const health = o.health, alerts = o.alerts || { alerts: [] }, services = o.services || { services: [] };
  $("status").className = "badge " + health.status;
  $("status").textContent = health.status;
  $("meta").textContent = "v" + health.version + " · up " + fmtDuration(health.uptime_seconds);
  drawAlerts(alerts.alerts || []);
  drawUpstreams(health.upstreams || []);
  drawSlos(health.slos || []);
  drawServices(services.services || []);
  drawProbes(health.probes || []);
}

function drawAlerts(list) {
  const day = Date.now() - 86400e3;
  const active = list.filter((a) => a.state === "firing" || a.state === "pending");
  const recent = list.filter((a) => a.state === "resolved" && a.resolved_at && Date.parse(a.resolved_at) > day);
  const box = $("alerts");
  if (!active.length && !recent.length) {
    box.replaceChildren(el("p", { class: "muted" }, list.length + " rules, none firing or pending, none resolved in the last 24 h."));
    return;
  }
  const rows = active.concat(recent).map((a) =>
    el("tr", { "data-alert": a.name, "data-state": a.state },
      el("td", {}, badge(a.state)),
      el("td", {}, a.name),
      el("td", {}, a.severity),
      el("td", {}, a.signal + " " + a.threshold + (a.value === null ? " (no data)" : " (now " + (+a.value).toPrecision(3) + ")")),
      el("td", {}, a.state === "resolved" ? "resolved " + a.resolved_at : "since " + (a.active_since || "")),
      el("td", {}, a.silenced ? "silenced until " + a.silenced.until : "")));
  box.replaceChildren(el("div", { class: "card scroll" },
    el("table", {}, el("tbody", {}, rows))));
}

function upstreamCard(u) {
  let card = document.querySelector('[data-upstream="' + CSS.escape(u.name) + '"]');
  if (card) return card;
  const chartBox = el("div", { class: "charts" });
  for (const [kind, title] of [["traffic", "Traffic (requests/s)"], ["errors", "Errors (% of responses)"],
    ["latency", "Latency p50 / p95 / p99 (ms)"], ["saturation", "Saturation (in flight / limit)"]]) {
    chartBox.append(el("div", { class: "chart", "data-chart": kind, "data-points": "0" },
      el("div", { class: "title" }, title), el("div", { class: "plot" })));
  }
  card = el("div", { class: "card", "data-upstream": u.name },
    el("h3", {}, el("span", { class: "name" }, u.name), el("span", { class: "health" }), el("span", { class: "muted load" })),
    el("div", { class: "servers" }), chartBox);
  $("upstreams").append(card);
  return card;
}

function drawUpstreams(list) {
  const names = list.map((u) => u.name);
  for (const card of document.querySelectorAll("[data-upstream]")) {
    if (!names.includes(card.dataset.upstream)) card.remove();
  }
  for (const u of list) {
    const card = upstreamCard(u);
    card.dataset.limit = u.limit;
    card.querySelector(".health").replaceChildren(badge(u.healthy ? "healthy" : "unhealthy"));
    card.querySelector(".load").textContent = "in flight " + u.in_flight + " / " + u.limit + (u.queued ? ", queued " + u.queued : "");
    card.querySelector(".servers").replaceChildren(...u.servers.map((s) =>
      el("span", { class: "badge " + s.state, "data-server": s.address, title: s.state }, s.address + " " + s.state)));
  }
  const changed = names.join() !== upstreamNames.join();
  upstreamNames = names;
  if (changed) refreshHistory().catch((e) => showError(e.message));
}

function drawSlos(list) {
  if (!list.length) return;
  const rows = list.map((s) => {
    const left = Math.max(0, Math.min(1, s.error_budget_remaining));
    const burns = Object.entries(s.burn_rate).map(([w, b]) => w + " " + (b === null ? "–" : b.toFixed(2) + "×")).join(" · ");
    return el("tr", { "data-slo": s.name },
      el("td", {}, s.name),
      el("td", {}, s.upstream),
      el("td", {}, s.objective + "% / " + s.window),
      el("td", {}, el("div", { class: "bar" + (left < 0.25 ? " low" : "") }, el("span", { style: "width:" + (left * 100).toFixed(1) + "%" }))),
      el("td", {}, (s.error_budget_remaining * 100).toFixed(1) + "% left"),
      el("td", {}, s.requests + " requests, " + s.bad_requests + " bad"),
      el("td", { class: "muted" }, burns));
  });
  $("slos").replaceChildren(el("div", { class: "card scroll" }, el("table", {},
    el("thead", {}, el("tr", {}, ["SLO", "upstream", "objective", "budget", "", "window", "burn rate"].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows))));
}

function drawServices(list) {
  if (!list.length) return;
  const rows = list.map((s) => {
    const by = {};
    let restarts = 0, cpu = 0, rss = 0;
    for (const i of s.instances) {
      by[i.state] = (by[i.state] || 0) + 1;
      restarts += i.restarts || 0;
      cpu += i.cpu_percent || 0;
      rss += (i.rss_kib || 0) * 1024;
    }
    return el("tr", { "data-service": s.name },
      el("td", {}, s.name),
      el("td", {}, Object.entries(by).map(([st, n]) => [badge(st), " ×" + n + " "])),
      el("td", {}, restarts + " restarts"),
      el("td", {}, cpu.toFixed(1) + "% CPU"),
      el("td", {}, fmtBytes(rss)));
  });
  $("services").replaceChildren(el("div", { class: "card scroll" }, el("table", {}, el("tbody", {}, rows))));
}

function drawProbes(list) {
  if (!list.length) return;
  const pct = (v) => (v === null || v === undefined ? "–" : v.toFixed(2) + "%");
  const rows = list.map((p) => el("tr", { "data-probe": p.name },
    el("td", {}, badge(!p.checked ? "pending" : p.up ? "up" : "down")),
    el("td", {}, p.name),
    el("td", {}, p.checked ? Math.round(p.duration_seconds * 1000) + " ms" : ""),
    el("td", {}, "24 h " + pct(p.uptime.percent_24h)),
    el("td", {}, "7 d " + pct(p.uptime.percent_7d)),
    el("td", {}, "30 d " + pct(p.uptime.percent_30d)),
    el("td", { class: "muted" }, p.error || "")));
  $("probes").replaceChildren(el("div", { class: "card scroll" }, el("table", {}, el("tbody", {}, rows))));
}

// ---- history: every 10 s and on a range change ----

const SERIES = ["rps", "error_ratio", "p50", "p95", "p99", "in_flight"];

async function refreshHistory() {
  const to = Math.floor(Date.now() / 1000);
  await Promise.all(upstreamNames.map(async (name) => {
    const q = SERIES.map((s) => "upstream:" + name + ":" + s).join(",");
    const h = await api("/-/history?series=" + q + "&from=" + (to - range) + "&to=" + to);
    const col = (s) => h.series["upstream:" + name + ":" + s] || [];
    const scale = (s, k) => col(s).map((v) => (v === null ? null : v * k));
    const card = document.querySelector('[data-upstream="' + CSS.escape(name) + '"]');
    if (!card) return;
    const limit = +card.dataset.limit;
    draw(card, name, "traffic", [h.t, col("rps")], ["req/s"]);
    draw(card, name, "errors", [h.t, scale("error_ratio", 100)], ["errors %"]);
    draw(card, name, "latency", [h.t, scale("p50", 1000), scale("p95", 1000), scale("p99", 1000)], ["p50", "p95", "p99"]);
    draw(card, name, "saturation", [h.t, col("in_flight"), h.t.map(() => limit)], ["in flight", "limit"]);
  }));
}

const COLORS = ["#4c6ef5", "#e8590c", "#c62828", "#868e96"];

function draw(card, upstream, kind, data, labels) {
  const box = card.querySelector('[data-chart="' + kind + '"]');
  const points = data[1].filter((v) => v !== null).length;
  box.dataset.points = String(points);
  const key = upstream + "/" + kind;
  const plot = charts.get(key);
  const width = Math.max(240, box.clientWidth - 4);
  if (plot && plot.series.length === data.length) {
    plot.setData(data);
    if (Math.abs(plot.width - width) > 2) plot.setSize({ width, height: 160 });
    return;
  }
  if (plot) plot.destroy();
  const opts = {
    width, height: 160,
    legend: { show: true },
    scales: { y: { range: (u, min, max) => [0, Math.max(max || 0, 1) * 1.1] } },
    series: [{}].concat(labels.map((l, i) => ({ label: l, stroke: COLORS[i], width: 1.5, spanGaps: false,
      dash: kind === "saturation" && i === 1 ? [4, 4] : undefined }))),
    axes: [{}, { size: 50 }],
  };
  charts.set(key, new uPlot(opts, data, box.querySelector(".plot")));
}

// ---- wiring ----

for (const b of document.querySelectorAll("#ranges button")) {
  b.addEventListener("click", () => {
    range = +b.dataset.range;
    for (const o of document.querySelectorAll("#ranges button")) o.classList.toggle("on", o === b);
    refreshHistory().catch((e) => showError(e.message));
  });
}

let resizeTimer = 0;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => refreshHistory().catch(() => {}), 200);
});

async function loop(fn, every) {
  for (;;) {
    try {
      await fn();
      showError("");
    } catch (e) {
      showError("Cannot reach the admin API: " + e.message);
    }
    await new Promise((r) => setTimeout(r, every));
  }
}

loop(refreshState, STATE_EVERY_MS);
setTimeout(() => loop(refreshHistory, HISTORY_EVERY_MS), 500);
