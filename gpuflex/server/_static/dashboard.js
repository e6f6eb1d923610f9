// The gpuflex dev server's dashboard: reads GET /stats as server-sent events and draws it. No framework, no build
// step. Text from the server (worker output included) is only ever set as text, never parsed as HTML.
"use strict";
(() => {
  const KEY = "gpuflex-token";
  const JOBS_SHOWN = 50;
  const LINES_SHOWN = 6;
  const $ = (id) => document.getElementById(id);
  let token = sessionStorage.getItem(KEY);

  function tokenFromFragment() {  // /#token=...: keep it for this tab, and take it out of the address bar
    const fragment = new URLSearchParams(location.hash.slice(1));
    if (!fragment.has("token")) return false;
    token = fragment.get("token");
    sessionStorage.setItem(KEY, token);
    history.replaceState(null, "", location.pathname + location.search);
    return true;
  }
  tokenFromFragment();

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (name === "class") node.className = value;
      else if (name === "style") Object.assign(node.style, value);
      else node.setAttribute(name, value);
    }
    for (const child of children) {
      node.append(child instanceof Node ? child : document.createTextNode(child == null ? "" : String(child)));
    }
    return node;
  }

  function usd(value) {  // as the CLI writes dollars: enough digits to be non-zero
    if (!value) return "$0";
    if (Math.abs(value) >= 1) return "$" + value.toFixed(2);
    const decimals = Math.min(10, Math.max(2, 2 - Math.floor(Math.log10(Math.abs(value)))));
    return "$" + value.toFixed(decimals).replace(/0+$/, "").replace(/\.$/, ".00");
  }

  function seconds(value) {
    if (value === null || value === undefined) return "–";
    return value < 1 ? (value * 1000).toFixed(0) + " ms" : value.toFixed(2) + " s";
  }

  function mean(histogram) {
    return histogram && histogram.count ? histogram.sum / histogram.count : null;
  }

  function empty(columns, text) {
    return el("tr", {}, el("td", { class: "empty", colspan: String(columns) }, text));
  }

  function renderSpend(data) {
    const spend = $("spend");
    const budget = data.budget_usd;
    spend.replaceChildren(el("strong", { id: "spent" }, usd(data.spent_usd)), " spent",
      budget === null ? el("span", { class: "dim" }, " (no budget: --max-cost sets one)")
        : el("span", {}, " of ", el("strong", { id: "budget-usd" }, usd(budget)), " budget"));
    const bar = $("budget");
    bar.hidden = budget === null;
    if (budget !== null) {
      const share = budget > 0 ? Math.min(1, data.spent_usd / budget) : 1;
      bar.firstElementChild.style.width = (share * 100).toFixed(1) + "%";
      bar.classList.toggle("over", data.spent_usd >= budget);
    }
  }

  function renderEndpoints(data) {
    const stats = new Map(data.endpoints.map((e) => [e.endpoint + "\u0000" + e.backend, e]));
    const spend = new Map(data.costs.map((c) => [c.endpoint, c]));
    const rows = data.declared.map((d) => ({ ...d, stats: stats.get(d.endpoint + "\u0000" + d.backend) }));
    for (const e of data.endpoints) {  // run on another backend than the one declared now (before a reload)
      if (!rows.some((r) => r.endpoint === e.endpoint && r.backend === e.backend)) {
        rows.push({ endpoint: e.endpoint, backend: e.backend, gpu: e.gpu, settings: e.settings, stats: e });
      }
    }
    $("endpoints").tBodies[0].replaceChildren(...rows.map((r) => {
      const s = r.stats;
      const settings = r.settings || {};
      const parts = [`workers ${settings.min_workers}–${settings.max_workers}`, `concurrency ${settings.concurrency}`];
      if (settings.max_batch_size) parts.push(`batches of ≤${settings.max_batch_size}`);
      if (settings.timeout) parts.push(`timeout ${settings.timeout} s`);
      const workers = s ? Object.entries(s.workers).map(([k, v]) => `${v} ${k.toLowerCase()}`).join(", ") : "";
      const jobs = s ? [...Object.entries(s.jobs), ...Object.entries(s.in_flight)]
        .map(([k, v]) => `${v} ${k.toLowerCase()}`).join(", ") : "";
      const means = s ? ["queued", "cold_start", "run"].map((p) => seconds(mean(s.phases[p]))).join(" / ") : "–";
      const cost = spend.get(r.endpoint);
      const spent = cost ? usd(cost.cost_usd + cost.idle_usd) + (cost.idle_usd ? ` (idle ${usd(cost.idle_usd)})` : "")
        : "$0";
      return el("tr", { "data-endpoint": r.endpoint }, el("td", {}, r.endpoint), el("td", {}, r.backend),
        el("td", {}, r.gpu || "none"), el("td", { class: "dim" }, parts.join(", ")), el("td", {}, workers || "none"),
        el("td", {}, jobs || "none yet"), el("td", {}, means), el("td", { class: "num" }, spent));
    }));
    if (!rows.length) $("endpoints").tBodies[0].replaceChildren(empty(8, "no endpoints in this app"));
  }

  function renderWorkers(data) {
    const order = { BUSY: 0, IDLE: 1, STARTING: 2, STOPPING: 3, DEAD: 5 };
    const workers = [...data.workers].sort((a, b) => (order[a.state] ?? 4) - (order[b.state] ?? 4));
    $("workers").tBodies[0].replaceChildren(...workers.map((w) => {
      const lines = w.output.slice(-LINES_SHOWN).map(([, stream, text]) => el("span", { class: stream }, text + "\n"));
      const state = w.state === null ? "reported through its jobs" : w.state.toLowerCase();
      return el("tr", { "data-worker": w.id, "data-state": w.state || "" }, el("td", {}, w.id),
        el("td", {}, w.endpoint), el("td", { title: w.reason }, state + (w.reason ? ` (${w.reason})` : "")),
        el("td", {}, w.gpus.length ? w.gpus.join(", ") : (w.state === null ? "–" : "none (CPU)")),
        el("td", { class: "dim" }, [w.host, w.pid].filter(Boolean).join(" pid ")),
        el("td", {}, `${w.active_jobs} running, ${w.jobs_done} done`),
        el("td", {}, el("pre", { class: "output" }, ...lines)));
    }));
    if (!workers.length) $("workers").tBodies[0].replaceChildren(empty(7, "no workers yet: the first call starts one"));
  }

  function renderJobs(data) {
    const jobs = data.jobs.slice(-JOBS_SHOWN).reverse();
    const now = data.taken_at;
    const phases = jobs.map((j) => {
      const waited = j.started_at === null ? (j.finished_at ?? now) - j.submitted_at : null;
      const run = j.run ?? (j.started_at !== null ? (j.finished_at ?? now) - j.started_at : 0);
      return { queued: j.queued ?? waited ?? 0, cold_start: j.cold_start ?? 0, run };
    });
    const longest = Math.max(1e-9, ...phases.map((p) => p.queued + p.cold_start + p.run));
    $("jobs").tBodies[0].replaceChildren(...jobs.map((j, i) => {
      const p = phases[i];
      const bar = el("div", { class: "timeline" }, ...["queued", "cold_start", "run"].map((name) =>
        el("span", { class: name, title: `${name}: ${seconds(p[name])}`,
          style: { width: (100 * p[name] / longest).toFixed(2) + "%" } })));
      const cost = j.billing === "unknown" ? "unknown" : usd(j.cost_usd);
      return el("tr", { "data-job": j.id, "data-status": j.status }, el("td", {}, j.id), el("td", {}, j.endpoint),
        el("td", { class: "status-" + j.status, title: j.reason }, j.status), el("td", {}, j.worker || "–"),
        el("td", {}, bar), el("td", { class: "num" }, seconds(j.queued)),
        el("td", { class: "num" }, seconds(j.cold_start)), el("td", { class: "num" }, seconds(j.run)),
        el("td", { class: "num" }, cost));
    }));
    if (!jobs.length) $("jobs").tBodies[0].replaceChildren(empty(9, "no jobs yet"));
  }

  function render(data) {
    $("app").textContent = data.app + (data.reloads ? ` (reloaded ${data.reloads}×)` : "");
    renderSpend(data);
    renderEndpoints(data);
    renderWorkers(data);
    renderJobs(data);
    document.body.dataset.updated = String(data.taken_at);
  }

  function setConnection(state, text) {
    const conn = $("conn");
    conn.dataset.state = state;
    conn.textContent = text;
  }

  function showLogin(message) {
    for (const id of ["endpoints", "workers", "jobs"]) $(id).tBodies[0].replaceChildren();
    $("spend").replaceChildren();
    $("app").textContent = "";
    $("main").hidden = true;
    $("login").hidden = false;
    $("login-message").textContent = message;
    setConnection("locked", "token needed");
  }

  function handle(block) {
    let event = "message";
    let data = "";
    for (const line of block.split("\n")) {
      if (line.startsWith("event: ")) event = line.slice(7);
      else if (line.startsWith("data: ")) data += line.slice(6);
    }
    if (event === "stats" && data) {
      render(JSON.parse(data));
      setConnection("live", "live");  // only once there is something to show
    }
  }

  function retry() {
    setConnection("down", "reconnecting…");
    setTimeout(connect, 1000);
  }

  async function connect() {
    const headers = { Accept: "text/event-stream" };
    if (token) headers.Authorization = "Bearer " + token;
    let response;
    try {
      response = await fetch("/stats", { headers, cache: "no-store" });
    } catch (error) {
      retry();
      return;
    }
    if (response.status === 401) {
      showLogin(token ? "The server refused that token." : "");
      return;
    }
    if (!response.ok || !response.body) {
      retry();
      return;
    }
    $("login").hidden = true;
    $("main").hidden = false;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          handle(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
        }
      }
    } catch (error) {
      // the server went away (a restart): try again
    }
    retry();
  }

  window.addEventListener("hashchange", () => {
    if (tokenFromFragment() && $("conn").dataset.state === "locked") connect();
  });
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("token").value.trim();
    $("token").value = "";
    sessionStorage.setItem(KEY, token);
    connect();
  });
  connect();
})();
