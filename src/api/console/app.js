// The ferry operator console. Everything shown comes from this node's API (API.md §3) with the
// same token rules as any host app; live changes come from the /v1/events WebSocket, and lists
// are fetched again only when an event says that something changed.
"use strict";

(() => {
  const HEARTBEAT_MS = Number(document.querySelector('meta[name="ferry-heartbeat-ms"]').content) || 15000;
  const TOKEN_KEY = "ferry.console.token";
  const CHART_SECONDS = 300;
  const KEEP_FINISHED_TRANSFER_MS = 120000;

  let token = sessionStorage.getItem(TOKEN_KEY) || "";
  let started = false;
  let socket = null;
  let outbox = [];
  let lastEvidenceSeq = 0;
  let evidenceRows = [];
  const transfers = new Map(); // id -> {done, total, at, peer, rate, mark}
  const stateOf = new Map(); // id -> the request's state as the API names it; null: not kept (synchronous)
  const looking = new Set(); // ids whose state is being fetched
  const knownIds = new Set();
  const buckets = new Map(); // epoch second -> {bytes, requests}

  const $ = (selector) => document.querySelector(selector);

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key.startsWith("data-")) node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? String(n) : n.toFixed(n < 10 ? 2 : 1).replace(/\.0+$/, "")) + " " + units[i];
  }

  // A whole, unambiguous time: the date, the time to the second, and the browser's time zone.
  function when(text) {
    if (!text) return "";
    const d = new Date(text);
    if (isNaN(d)) return text;
    const p = (n) => String(n).padStart(2, "0");
    const zone = new Intl.DateTimeFormat(undefined, { timeZoneName: "short" })
      .formatToParts(d).find((part) => part.type === "timeZoneName");
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ` +
      `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}` + (zone ? " " + zone.value : "");
  }

  // Ids are UUIDv7: their start is a timestamp, their end tells them apart.
  function short(id) { return id ? "…" + String(id).slice(-8) : ""; }

  function badge(text, cls) { return el("span", { class: "badge " + (cls || "state-" + text), text }); }

  class Refused extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  // One call to the API; the envelope's data, or an Error with the envelope's msg.
  async function api(path, options = {}) {
    const headers = {};
    if (token) headers["Authorization"] = "Bearer " + token;
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method: options.method || "GET",
      headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
      cache: "no-store",
      credentials: "omit",
    });
    if ((response.headers.get("content-type") || "").includes("ndjson")) {
      const text = await response.text();
      return text.split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l));
    }
    const envelope = await response.json();
    if (response.status === 401 || response.status === 403) {
      refused(response.status, envelope.msg);
      throw new Refused(response.status, envelope.msg);
    }
    if (envelope.code !== 0) throw new Error(envelope.msg || "HTTP " + response.status);
    return envelope.data;
  }

  function refused(status, message) {
    if (status === 401) {
      $("#console").hidden = true;
      $("#login").hidden = false;
      $("#login-error").textContent = token ? "The node refused this token: " + message : "";
      closeSocket();
      started = false;
    } else {
      $("#refused").hidden = false;
      $("#refused").textContent = "Refused: " + message;
    }
  }

  // ---- peers and queues --------------------------------------------------------------------

  async function refreshStats() {
    const [stats, peers] = await Promise.all([api("/v1/stats"), api("/v1/peers")]);
    const rtt = new Map(stats.peers.map((p) => [p.name, p]));
    $("#peers tbody").replaceChildren(...peers.map((p) => el("tr", { "data-peer": p.name },
      el("td", { text: p.name }),
      el("td", {}, badge(p.connected ? "connected" : "disconnected")),
      el("td", { class: "num", text: p.rtt_ms == null ? "–" : p.rtt_ms.toFixed(1) + " ms" }),
      el("td", {}, el("code", { text: p.fingerprint, title: p.address })),
      el("td", { class: "error", text: p.last_error || "", title: "last seen " + ((rtt.get(p.name) || {}).last_seen || "never") }))));
    const row = (name, q) => el("tr", { "data-direction": name },
      el("th", { text: name }),
      ...["waiting", "doing", "success", "failed"].map((s) => el("td", { class: "num", "data-state": s, text: q[s] ?? 0 })));
    $("#queues tbody").replaceChildren(row("outgoing", stats.outgoing), row("incoming", stats.incoming));
    $("#queues-extra").textContent =
      `callbacks pending: ${stats.callbacks_pending} · transfers active: ${stats.transfers_active}`;
  }

  // ---- requests in flight, with transfers --------------------------------------------------

  let inflightItems = [];
  const requestInfo = new Map(); // id -> the last listed status, for transfers that left the list

  async function refreshInflight() {
    const [waiting, doing] = await Promise.all([
      api("/v1/requests?state=waiting&limit=100"),
      api("/v1/requests?state=doing&limit=100"),
    ]);
    inflightItems = [...waiting.items, ...doing.items];
    for (const item of inflightItems) {
      knownIds.add(item.id);
      stateOf.set(item.id, item.state);
      requestInfo.set(item.id, item);
      if (item.transfer && item.transfer.size && !transfers.has(item.id)) {
        transfers.set(item.id, { done: item.transfer.bytes_done || 0, total: item.transfer.size, at: Date.now(), peer: item.peer });
      }
    }
    // Kept a while after a request leaves the list: its file may still be on its way.
    for (const id of requestInfo.keys()) {
      if (requestInfo.size <= 1000) break;
      requestInfo.delete(id);
    }
    for (const id of stateOf.keys()) {
      if (stateOf.size <= 10000) break;
      if (!transfers.has(id)) stateOf.delete(id);
    }
    renderInflight();
  }

  // The state of a request whose file moves but that is not listed in flight (its state came
  // before the page opened, or it is done while its reply's file still moves): asked once.
  async function lookUp(id) {
    if (looking.has(id) || stateOf.has(id)) return;
    looking.add(id);
    try {
      const r = await api("/v1/requests/" + encodeURIComponent(id));
      requestInfo.set(id, r);
      if (!stateOf.has(id)) stateOf.set(id, r.state);
    } catch (e) {
      if (e instanceof Refused) throw e;
      stateOf.set(id, null); // not kept: a synchronous request's file
    } finally {
      looking.delete(id);
    }
    renderInflight();
  }

  // A transfer's state in the API's names: its request's; for a request the node does not keep
  // (synchronous), `doing` while its file moves.
  function transferState(id, t) {
    const state = stateOf.get(id);
    if (state) return state;
    if (state === undefined) lookUp(id).catch(report);
    return t.done < t.total ? "doing" : null;
  }

  function progressBar(id, t) {
    const bar = el("div", { class: "bar", "data-id": id }, el("span"), el("em"));
    updateBar(bar, t);
    return bar;
  }

  function updateBar(bar, t) {
    const pct = t.total > 0 ? Math.min(100, (100 * t.done) / t.total) : 0;
    bar.setAttribute("data-done", String(t.done));
    bar.setAttribute("data-total", String(t.total));
    bar.classList.toggle("done", t.done >= t.total);
    bar.firstChild.style.width = pct.toFixed(1) + "%";
    const rate = t.done < t.total && t.rate ? ` · ${bytes(Math.round(t.rate))}/s` : "";
    bar.lastChild.textContent = `${bytes(t.done)} / ${bytes(t.total)} (${pct.toFixed(0)}%)${rate}`;
  }

  function renderInflight() {
    const now = Date.now();
    const rows = inflightItems.map((r) => el("tr", { "data-id": r.id },
      el("td", {}, el("code", { text: short(r.id), title: r.id })),
      el("td", { text: r.direction === "outgoing" ? "out" : "in" }),
      el("td", { text: r.peer }),
      el("td", { text: r.service }),
      el("td", {}, el("code", { text: `${r.method} ${r.path}` })),
      el("td", {}, badge(r.state)),
      el("td", {}, transfers.has(r.id) ? progressBar(r.id, transfers.get(r.id)) : "")));
    const listed = new Set(inflightItems.map((r) => r.id));
    for (const [id, t] of transfers) {
      if (listed.has(id)) continue;
      if (t.done >= t.total && now - t.at > KEEP_FINISHED_TRANSFER_MS) { transfers.delete(id); continue; }
      const state = transferState(id, t);
      if (!state && stateOf.get(id) === null) continue; // a synchronous request's file, through
      const r = requestInfo.get(id) || {};
      rows.push(el("tr", { "data-id": id },
        el("td", {}, el("code", { text: short(id), title: id })),
        el("td", { text: r.direction ? (r.direction === "outgoing" ? "out" : "in") : "" }),
        el("td", { text: t.peer || "" }),
        el("td", { text: r.service || "" }),
        el("td", {}, r.method ? el("code", { text: `${r.method} ${r.path}` }) : ""),
        el("td", {}, state ? badge(state) : ""),
        el("td", {}, progressBar(id, t))));
    }
    if (rows.length === 0) rows.push(el("tr", {}, el("td", { colSpan: 7, class: "muted", text: "nothing in flight" })));
    $("#inflight tbody").replaceChildren(...rows);
  }

  function onProgress(event) {
    const previous = transfers.get(event.id);
    const delta = Math.max(0, event.bytes_done - (previous ? previous.done : 0));
    count("bytes", delta);
    const now = Date.now();
    const t = { done: event.bytes_done, total: event.bytes_total, at: now, peer: event.peer, rate: null, mark: [now, event.bytes_done] };
    if (previous && previous.mark && event.bytes_done >= previous.mark[1]) {
      // The rate over a second or more, as the API measures it.
      const [since, from] = previous.mark;
      t.rate = previous.rate;
      t.mark = previous.mark;
      if (now - since >= 1000) { t.rate = (1000 * (event.bytes_done - from)) / (now - since); t.mark = [now, event.bytes_done]; }
    }
    transfers.set(event.id, t);
    const bar = document.querySelector(`#inflight .bar[data-id="${CSS.escape(event.id)}"]`);
    if (bar) updateBar(bar, t);
    else renderInflight();
    // A file that starts or ends changes the count of transfers active.
    if (!previous || (previous.done < previous.total) !== (t.done < t.total)) schedule("stats");
  }

  // ---- pending approvals -------------------------------------------------------------------

  async function refreshPending() {
    const [pending, box] = await Promise.all([api("/v1/pending"), api("/v1/outbox")]);
    outbox = box.files;
    const body = $("#pending tbody");
    const existing = new Map([...body.querySelectorAll("tr[data-callback]")].map((tr) => [tr.dataset.callback, tr]));
    const rows = pending.map((p) => existing.get(p.callback_id) || pendingRow(p));
    for (const row of rows) fillFiles(row.querySelector("select"));
    if (rows.length === 0) rows.push(el("tr", {}, el("td", { colSpan: 6, class: "muted", text: "nothing awaits an answer" })));
    body.replaceChildren(...rows);
  }

  function fillFiles(select) {
    if (!select) return;
    const chosen = select.value;
    select.replaceChildren(el("option", { value: "", text: outbox.length ? "— choose a file to send —" : "— no file below the send roots —" }),
      ...outbox.map((f) => el("option", { value: f.path, text: `${f.name} (${bytes(f.size)})` })));
    select.value = outbox.some((f) => f.path === chosen) ? chosen : "";
    select.dispatchEvent(new Event("change"));
  }

  function pendingRow(p) {
    const select = el("select", { class: "file", title: "a file below files.send_roots" });
    const approve = el("button", { type: "button", class: "approve", text: "Approve", disabled: true });
    const reason = el("input", { type: "text", class: "reason", placeholder: "reason to reject", size: 16 });
    const reject = el("button", { type: "button", class: "reject", text: "Reject" });
    const status = el("span", { class: "muted status" });
    select.addEventListener("change", () => { approve.disabled = !select.value; });
    const answer = async (body, what) => {
      for (const b of [approve, reject]) b.disabled = true;
      status.textContent = what + "…";
      try {
        await api("/v1/replies", { method: "POST", body: Object.assign({ callback_id: p.callback_id }, body) });
        status.textContent = what === "sending" ? "approved, sending" : "rejected";
      } catch (e) {
        status.textContent = "";
        status.className = "error status";
        status.textContent = e.message;
        approve.disabled = !select.value;
        reject.disabled = false;
      }
      schedule("pending", "inflight", "stats");
    };
    approve.addEventListener("click", () => {
      const file = outbox.find((f) => f.path === select.value);
      if (file) answer({ file: file.path, data: { file_name: file.path.split("/").pop() } }, "sending");
    });
    reject.addEventListener("click", () => answer({ error: reason.value.trim() || "rejected by the operator" }, "rejecting"));
    return el("tr", { "data-callback": p.callback_id },
      el("td", { text: p.peer }),
      el("td", { text: p.service }),
      el("td", {}, el("code", { text: `${p.method} ${p.path}` })),
      el("td", {}, el("code", { text: JSON.stringify(p.form || {}) })),
      el("td", { text: when(p.created_at) }),
      el("td", { class: "answer" }, select, approve, reason, reject, status));
  }

  // ---- failures and evidence ---------------------------------------------------------------

  async function refreshFailures() {
    const page = await api("/v1/requests?state=failed&limit=20");
    for (const r of page.items) knownIds.add(r.id);
    const rows = page.items.map((r) => el("tr", { "data-id": r.id },
      el("td", { text: when(r.updated_at) }),
      el("td", {}, el("code", { text: short(r.id), title: r.id })),
      el("td", { text: r.direction === "outgoing" ? "out" : "in" }),
      el("td", { text: r.peer }),
      el("td", {}, el("code", { text: `${r.method} ${r.path}` })),
      el("td", { class: "error", text: r.error || "" })));
    if (rows.length === 0) rows.push(el("tr", {}, el("td", { colSpan: 6, class: "muted", text: "no failures" })));
    $("#failures tbody").replaceChildren(...rows);
  }

  async function refreshEvidence() {
    for (;;) {
      const records = await api(`/v1/audit?since=${lastEvidenceSeq}&limit=1000`);
      if (records.length === 0) break;
      const b = $("#verify");
      b.className = "badge";
      b.textContent = "checking…";
      delete b.dataset.intact;
      lastEvidenceSeq = records[records.length - 1].seq;
      evidenceRows = evidenceRows.concat(records).slice(-30);
      if (records.length < 1000) break;
    }
    $("#evidence tbody").replaceChildren(...evidenceRows.slice().reverse().map((r) => el("tr", { "data-seq": r.seq },
      el("td", { class: "num", text: r.seq }),
      el("td", { text: when(r.at) }),
      el("td", {}, r.event === "receipt" ? badge("receipt", "ok") : r.event),
      el("td", { text: r.direction }),
      el("td", { text: r.peer }),
      el("td", {}, el("code", { text: short(r.id), title: r.id })),
      el("td", { text: r.file && r.file.name ? `${r.file.name} ${bytes(r.file.size)}` : "" }),
      el("td", {}, el("code", { text: (r.hash || "").slice(0, 12), title: r.hash })))));
    await verifyEvidence();
  }

  let lastVerify = 0;
  let verifyTimer = null;
  async function verifyEvidence() {
    const wait = lastVerify + 1000 - Date.now();
    if (wait > 0) {
      if (!verifyTimer) verifyTimer = setTimeout(() => { verifyTimer = null; verifyEvidence().catch(report); }, wait);
      return;
    }
    lastVerify = Date.now();
    const v = await api("/v1/audit/verify");
    const b = $("#verify");
    if (v.intact) {
      b.className = "badge ok";
      b.textContent = `intact · ${v.records} records · ${v.receipts} receipts verified`;
    } else {
      b.className = "badge bad";
      b.textContent = `broken at seq ${v.seq}: ${v.why}`;
    }
    b.dataset.intact = String(v.intact);
  }

  // ---- refreshing on events ----------------------------------------------------------------

  const refreshers = {
    stats: refreshStats, inflight: refreshInflight, pending: refreshPending,
    failures: refreshFailures, evidence: refreshEvidence,
  };
  const due = new Set();
  let dueTimer = null;

  function schedule(...names) {
    for (const n of names) due.add(n);
    if (!dueTimer) dueTimer = setTimeout(runDue, 200);
  }

  async function runDue() {
    dueTimer = null;
    const names = [...due];
    due.clear();
    await Promise.all(names.map((n) => refreshers[n]().catch(report)));
  }

  function report(e) {
    if (!(e instanceof Refused)) console.warn("ferry console:", e);
  }

  function onEvent(event) {
    if (event.type === "progress") { onProgress(event); return; }
    if (event.type === "state") stateOf.set(event.id, event.state);
    if (event.type === "state" && !knownIds.has(event.id)) {
      if (knownIds.size > 100000) knownIds.clear(); // bounded; a few old ids may count again
      knownIds.add(event.id);
      count("requests", 1);
    }
    schedule("stats", "inflight", "pending", "failures", "evidence");
  }

  // ---- the events socket -------------------------------------------------------------------

  let heartbeat = null;
  let retry = 1000;

  function closeSocket() {
    if (heartbeat) clearInterval(heartbeat);
    heartbeat = null;
    if (socket) { socket.onclose = null; socket.close(); socket = null; }
    setLive(false, "offline");
  }

  function setLive(on, text) {
    const b = $("#live");
    b.className = "badge " + (on ? "ok" : "off");
    b.textContent = text;
  }

  function base64url(text) {
    const bytesOf = new TextEncoder().encode(text);
    let binary = "";
    for (const b of bytesOf) binary += String.fromCharCode(b);
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const protocols = token ? ["ferry", "bearer." + base64url(token)] : ["ferry"];
    const ws = new WebSocket(`${scheme}//${location.host}/v1/events`, protocols);
    socket = ws;
    ws.onopen = () => {
      retry = 1000;
      setLive(true, "live");
      ws.send("OK");
      heartbeat = setInterval(() => { if (ws.readyState === WebSocket.OPEN) ws.send("OK"); },
        Math.max(200, Math.floor(HEARTBEAT_MS / 3)));
      schedule(...Object.keys(refreshers)); // what happened while no socket was open
    };
    ws.onmessage = (m) => {
      try { onEvent(JSON.parse(m.data)); } catch (e) { report(e); }
    };
    ws.onclose = () => {
      if (heartbeat) clearInterval(heartbeat);
      heartbeat = null;
      socket = null;
      setLive(false, "reconnecting");
      setTimeout(() => {
        // A refused token shows the token form instead of reconnecting.
        api("/v1/health").then(() => { if (started && !socket) connect(); }, report);
      }, retry);
      retry = Math.min(retry * 2, 10000);
    };
  }

  // ---- the chart ---------------------------------------------------------------------------

  function count(what, n) {
    const second = Math.floor(Date.now() / 1000);
    const b = buckets.get(second) || { bytes: 0, requests: 0 };
    b[what] += n;
    buckets.set(second, b);
  }

  // The request rate of the minutes before the page opened, from the requests' creation times
  // (the bytes moved then are not known, so that series starts when the page does).
  let seeded = false;
  async function seedChart() {
    if (seeded) return;
    const since = Date.now() - CHART_SECONDS * 1000;
    const page = await api("/v1/requests?limit=500");
    seeded = true;
    for (const r of page.items) {
      const created = Date.parse(r.created_at);
      knownIds.add(r.id);
      if (created >= since) {
        const second = Math.floor(created / 1000);
        const b = buckets.get(second) || { bytes: 0, requests: 0 };
        b.requests += 1;
        buckets.set(second, b);
      }
    }
    drawChart();
  }

  function drawChart() {
    const canvas = $("#chart");
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth, height = canvas.clientHeight;
    if (canvas.width !== width * ratio) { canvas.width = width * ratio; canvas.height = height * ratio; }
    const g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    const now = Math.floor(Date.now() / 1000);
    for (const s of buckets.keys()) if (s < now - CHART_SECONDS) buckets.delete(s);
    const series = [];
    for (let s = now - CHART_SECONDS + 1; s <= now; s++) series.push(buckets.get(s) || { bytes: 0, requests: 0 });
    canvas.dataset.requests = String(series.reduce((n, b) => n + b.requests, 0));
    canvas.dataset.bytes = String(series.reduce((n, b) => n + b.bytes, 0));
    const maxBytes = Math.max(1024, ...series.map((b) => b.bytes));
    const maxRate = Math.max(1, ...series.map((b) => b.requests));
    const left = 80, right = 60, top = 10, bottom = 22;
    const w = width - left - right, h = height - top - bottom;
    const x = (i) => left + (w * i) / (CHART_SECONDS - 1);
    g.font = "11px system-ui, sans-serif";
    g.strokeStyle = "#d9dee6";
    g.fillStyle = "#6b7280";
    g.lineWidth = 1;
    for (let k = 0; k <= 4; k++) {
      const yy = top + (h * k) / 4;
      g.beginPath(); g.moveTo(left, yy); g.lineTo(left + w, yy); g.stroke();
      g.textAlign = "right";
      g.fillText(bytes(maxBytes * (1 - k / 4)) + "/s", left - 6, yy + 4);
      g.textAlign = "left";
      g.fillText((maxRate * (1 - k / 4)).toFixed(maxRate < 4 ? 1 : 0) + "/s", left + w + 6, yy + 4);
    }
    g.textAlign = "center";
    for (let m = 0; m <= CHART_SECONDS / 60; m++) {
      const i = CHART_SECONDS - 1 - m * 60;
      g.fillText(m === 0 ? "now" : `-${m} min`, x(Math.max(0, i)), height - 6);
    }
    g.beginPath();
    g.moveTo(x(0), top + h);
    series.forEach((b, i) => g.lineTo(x(i), top + h - (h * b.bytes) / maxBytes));
    g.lineTo(x(CHART_SECONDS - 1), top + h);
    g.closePath();
    g.fillStyle = "rgba(37, 99, 235, .35)";
    g.fill();
    g.strokeStyle = "#2563eb";
    g.stroke();
    g.beginPath();
    series.forEach((b, i) => {
      const yy = top + h - (h * b.requests) / maxRate;
      if (i === 0) g.moveTo(x(i), yy); else g.lineTo(x(i), yy);
    });
    g.strokeStyle = "#d97706";
    g.lineWidth = 2;
    g.stroke();
  }

  // ---- start -------------------------------------------------------------------------------

  async function start() {
    $("#refused").hidden = true;
    let health;
    try {
      health = await api("/v1/health");
    } catch (e) {
      if (!(e instanceof Refused)) { $("#refused").hidden = false; $("#refused").textContent = "The node does not answer: " + e.message; }
      return;
    }
    started = true;
    $("#login").hidden = true;
    $("#console").hidden = false;
    $("#forget").hidden = !token;
    $("#node-name").textContent = health.name + " · " + health.version;
    $("#node-fingerprint").textContent = health.fingerprint;
    document.title = "ferry · " + health.name;
    await Promise.all([seedChart(), ...Object.values(refreshers).map((r) => r())].map((p) => p.catch(report)));
    if (started && !socket) connect();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("#connect").addEventListener("click", () => {
      token = $("#token").value.trim();
      sessionStorage.setItem(TOKEN_KEY, token);
      $("#token").value = "";
      start();
    });
    $("#token").addEventListener("keydown", (e) => { if (e.key === "Enter") $("#connect").click(); });
    $("#forget").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); location.reload(); });
    setInterval(() => { if (started) { drawChart(); } }, 1000);
    setInterval(() => { if (started) renderInflight(); }, 30000);
    start();
  });
})();
