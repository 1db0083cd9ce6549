// The ferry operator console. Everything shown comes from this node's API (API.md §3) with the
// same token rules as any host app; live changes come from the /v1/events WebSocket, and lists
// are fetched again only when an event says that something changed. The page shows a loading line
// until the first data arrived, then every panel at once, filled.
"use strict";

(() => {
  const HEARTBEAT_MS = Number(document.querySelector('meta[name="ferry-heartbeat-ms"]').content) || 15000;
  const TOKEN_KEY = "ferry.console.token";
  const KEEP_FINISHED_TRANSFER_MS = 120000;
  const HISTORY_KEEP_MS = 24 * 3600 * 1000;

  let token = sessionStorage.getItem(TOKEN_KEY) || "";
  let started = false;
  let socket = null;
  let outbox = [];
  let lastEvidenceSeq = 0;
  let evidenceRows = [];
  const transfers = new Map(); // id -> {done, total, at, peer, rate, mark}
  const stateOf = new Map(); // id -> the request's state as the API names it; null: not kept (synchronous)
  const looking = new Set(); // ids whose state is being fetched
  let history = []; // the node's throughput points, oldest first (GET /v1/stats/history)
  let historySince = null;
  let historyEvery = 10;
  let services = [];
  let peerNames = [];
  let detailId = null;

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

  // A request id that opens the request's detail.
  function idLink(id) {
    return el("a", { href: "#detail", class: "open", text: short(id), title: id,
      onclick: (e) => { e.preventDefault(); openDetail(id).catch(report); } });
  }

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
      $("#loading").hidden = true;
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

  // A peer's key rollover: the certificates it replaced, still pinned until their grace ends, and
  // a new one held for the admin to compare and pin (`ferry peer accept`).
  function rollover(p) {
    const lines = (p.replaced || []).map((r) =>
      el("div", { class: "muted", text: `replaces ${r.fingerprint}, pinned until ${when(r.until)}` }));
    if (p.rollover_offered) {
      lines.push(el("div", { class: "error", text: `new certificate held for approval: ${p.rollover_offered} ` +
        `(compare it with ${p.name}'s admin, then: ferry peer accept ${p.name} --fingerprint ${p.rollover_offered})` }));
    }
    return lines;
  }

  // The members sharing this node's store (PostgreSQL), this one marked; hidden on SQLite.
  function showMembers(store) {
    $("#members-section").hidden = store.backend !== "postgres";
    if (store.backend !== "postgres") return;
    $("#members tbody").replaceChildren(...store.members.map((m) => el("tr", { "data-member": m.name },
      el("td", { text: m.name + (m.name === store.member ? " (this one)" : "") }),
      el("td", {}, badge(m.alive ? "alive" : "silent", m.alive ? "state-success" : "state-failed")),
      el("td", {}, el("code", { text: m.address })),
      el("td", { text: when(m.started_at) }),
      el("td", { text: when(m.alive_at) }))));
  }

  async function refreshStats() {
    const [stats, peers, health] = await Promise.all([api("/v1/stats"), api("/v1/peers"), api("/v1/health")]);
    showMembers(health.store || {});
    const rtt = new Map(stats.peers.map((p) => [p.name, p]));
    $("#peers tbody").replaceChildren(...peers.map((p) => el("tr", { "data-peer": p.name },
      el("td", { text: p.name }),
      el("td", {}, badge(p.connected ? "connected" : "disconnected")),
      el("td", { class: "num", text: p.rtt_ms == null ? "–" : p.rtt_ms.toFixed(1) + " ms" }),
      el("td", {}, el("code", { text: p.fingerprints.length > 1 ? p.fingerprints.join(", ") : p.fingerprint,
        title: p.addresses.length > 1 ? `at ${p.address}, one of ${p.addresses.join(", ")}` : `at ${p.address}` }), ...rollover(p)),
      el("td", { class: "error", text: p.last_error || "", title: "last seen " + ((rtt.get(p.name) || {}).last_seen || "never") }))));
    const row = (name, q) => el("tr", { "data-direction": name },
      el("th", { text: name }),
      ...["waiting", "doing", "success", "failed"].map((s) => el("td", { class: "num", "data-state": s, text: q[s] ?? 0 })));
    $("#queues tbody").replaceChildren(row("outgoing", stats.outgoing), row("incoming", stats.incoming));
    $("#queues-extra").textContent =
      `callbacks pending: ${stats.callbacks_pending} · transfers active: ${stats.transfers_active}`;
    peerNames = peers.map((p) => p.name);
    fillChoices($("#f-peer"), "any peer", peerNames);
  }

  // A filter's choices, keeping the one chosen.
  function fillChoices(select, any, names) {
    const chosen = select.value;
    const all = chosen && !names.includes(chosen) ? [...names, chosen] : names;
    select.replaceChildren(el("option", { value: "", text: any }), ...all.map((n) => el("option", { value: n, text: n })));
    select.value = chosen;
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

  // A request's id, direction, peer, service, method and path, and state, as table cells.
  function requestCells(r) {
    return [
      el("td", {}, idLink(r.id)),
      el("td", { text: r.direction === "outgoing" ? "out" : "in" }),
      el("td", { text: r.peer }),
      el("td", { text: r.service }),
      el("td", {}, el("code", { text: `${r.method} ${r.path}` })),
      el("td", {}, badge(r.state)),
    ];
  }

  function renderInflight() {
    const now = Date.now();
    const rows = inflightItems.map((r) => el("tr", { "data-id": r.id },
      ...requestCells(r),
      el("td", {}, transfers.has(r.id) ? progressBar(r.id, transfers.get(r.id)) : "")));
    const listed = new Set(inflightItems.map((r) => r.id));
    for (const [id, t] of transfers) {
      if (listed.has(id)) continue;
      if (t.done >= t.total && now - t.at > KEEP_FINISHED_TRANSFER_MS) { transfers.delete(id); continue; }
      const state = transferState(id, t);
      if (!state && stateOf.get(id) === null) continue; // a synchronous request's file, through
      const r = requestInfo.get(id) || {};
      rows.push(el("tr", { "data-id": id },
        el("td", {}, idLink(id)),
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
    const detailBar = document.querySelector(`#detail-transfer .bar[data-id="${CSS.escape(event.id)}"]`);
    if (detailBar && event.id === detailId) updateBar(detailBar, t);
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
    const data = el("input", { type: "text", class: "data", placeholder: 'data as JSON, e.g. {"rows": []}',
      title: "JSON data to reply with, alone or with the file" });
    const replyData = el("button", { type: "button", class: "reply-data", text: "Reply with data", disabled: true });
    const reason = el("input", { type: "text", class: "reason", placeholder: "reason to reject", size: 16 });
    const reject = el("button", { type: "button", class: "reject", text: "Reject" });
    const status = el("span", { class: "muted status" });
    const enable = () => { approve.disabled = !select.value; replyData.disabled = !data.value.trim(); };
    select.addEventListener("change", enable);
    data.addEventListener("input", enable);
    // The data typed, parsed; undefined when none; throws with a message when it is not JSON.
    const typedData = () => {
      const text = data.value.trim();
      if (!text) return undefined;
      try { return JSON.parse(text); } catch (e) { throw new Error("the data is not JSON: " + e.message); }
    };
    const answer = async (body, what, done) => {
      for (const b of [approve, replyData, reject]) b.disabled = true;
      status.className = "muted status";
      status.textContent = what + "…";
      try {
        await api("/v1/replies", { method: "POST", body: Object.assign({ callback_id: p.callback_id }, body) });
        status.textContent = done;
      } catch (e) {
        status.className = "error status";
        status.textContent = e.message;
        enable();
        reject.disabled = false;
      }
      schedule("pending", "inflight", "stats", "requests");
    };
    const failed = (e) => { status.className = "error status"; status.textContent = e.message; };
    approve.addEventListener("click", () => {
      const file = outbox.find((f) => f.path === select.value);
      if (!file) return;
      let given;
      try { given = typedData(); } catch (e) { failed(e); return; }
      answer({ file: file.path, data: given === undefined ? { file_name: file.path.split("/").pop() } : given },
        "sending", "approved, sending");
    });
    replyData.addEventListener("click", () => {
      let given;
      try { given = typedData(); } catch (e) { failed(e); return; }
      if (given !== undefined) answer({ data: given }, "replying", "replied with data");
    });
    reject.addEventListener("click", () => answer({ error: reason.value.trim() || "rejected by the operator" }, "rejecting", "rejected"));
    return el("tr", { "data-callback": p.callback_id },
      el("td", { text: p.peer }),
      el("td", { text: p.service }),
      el("td", {}, el("code", { text: `${p.method} ${p.path}` })),
      el("td", {}, el("code", { text: JSON.stringify(p.form || {}) })),
      el("td", { text: when(p.created_at) }),
      el("td", { class: "answer" }, select, approve, data, replyData, reason, reject, status));
  }

  // ---- failures and evidence ---------------------------------------------------------------

  async function refreshFailures() {
    const page = await api("/v1/requests?state=failed&limit=20");
    const rows = page.items.map((r) => el("tr", { "data-id": r.id },
      el("td", { text: when(r.updated_at) }),
      el("td", {}, idLink(r.id)),
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
    if (evidenceRows.length === 0) {
      $("#evidence tbody").replaceChildren(el("tr", {}, el("td", { colSpan: 8, class: "muted", text: "no record yet" })));
    } else $("#evidence tbody").replaceChildren(...evidenceRows.slice().reverse().map((r) => el("tr", { "data-seq": r.seq },
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
    failures: refreshFailures, evidence: refreshEvidence, services: refreshServices,
    waiting: refreshWaiting, requests: () => refreshRequests(false), detail: refreshDetail,
    history: refreshHistory,
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
    schedule("stats", "inflight", "pending", "failures", "evidence", "requests");
    if (event.id && event.id === detailId) schedule("detail");
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

  // ---- the chart: the node's own throughput history -----------------------------------------

  // New points since the last call; the node measures every `every_s` seconds and keeps 24 h, so
  // the chart shows what happened before the page was opened. A point is a rate over an interval
  // the node measured at both ends: nothing is drawn for time it did not measure.
  async function refreshHistory() {
    const h = await api("/v1/stats/history" + (historySince === null ? "" : "?since=" + historySince));
    historyEvery = h.every_s || 10;
    if (h.points.length) {
      history = history.concat(h.points);
      historySince = h.points[h.points.length - 1].at_ms;
      const oldest = Date.now() - HISTORY_KEEP_MS;
      while (history.length && history[0].at_ms < oldest) history.shift();
    }
    drawChart();
  }

  function drawChart() {
    const canvas = $("#chart");
    const span = Number($("#chart-span").value) || 3600;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth, height = canvas.clientHeight;
    if (!width || !height) return;
    if (canvas.width !== width * ratio) { canvas.width = width * ratio; canvas.height = height * ratio; }
    const g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    const now = Date.now();
    const from = now - span * 1000;
    const shown = history.filter((p) => p.at_ms > from);
    canvas.dataset.points = String(shown.length);
    canvas.dataset.requests = String(shown.reduce((n, p) => n + p.requests, 0));
    canvas.dataset.bytes = String(shown.reduce((n, p) => n + p.bytes, 0));
    const note = $("#chart-note");
    if (!shown.length) note.textContent = `· the node's first measurement comes ${historyEvery} s after it starts`;
    else if (shown[0].at_ms - shown[0].seconds * 1000 > from + historyEvery * 1000) {
      note.textContent = `· measured since ${when(new Date(shown[0].at_ms - shown[0].seconds * 1000).toISOString())}`;
    } else note.textContent = "";
    const maxBytes = Math.max(1024, ...shown.map((p) => p.bytes_per_s));
    const maxRate = Math.max(1, ...shown.map((p) => p.requests_per_s));
    const left = 80, right = 60, top = 10, bottom = 22;
    const w = width - left - right, h = height - top - bottom;
    const x = (ms) => left + (w * Math.max(0, ms - from)) / (span * 1000);
    g.font = "11px system-ui, sans-serif";
    g.strokeStyle = "#d9dee6";
    g.fillStyle = "#6b7280";
    g.lineWidth = 1;
    for (let k = 0; k <= 4; k++) {
      const yy = top + (h * k) / 4;
      g.beginPath(); g.moveTo(left, yy); g.lineTo(left + w, yy); g.stroke();
      g.textAlign = "right";
      g.fillText(bytes(Math.round(maxBytes * (1 - k / 4))) + "/s", left - 6, yy + 4);
      g.textAlign = "left";
      g.fillText((maxRate * (1 - k / 4)).toFixed(maxRate < 4 ? 1 : 0) + "/s", left + w + 6, yy + 4);
    }
    g.textAlign = "center";
    const ticks = 6;
    for (let k = 0; k <= ticks; k++) {
      const back = (span * (ticks - k)) / ticks;
      const label = k === ticks ? "now" : back >= 3600 ? `-${+(back / 3600).toFixed(1)} h` : `-${Math.round(back / 60)} min`;
      g.fillText(label, x(now - back * 1000), height - 6);
    }
    // Each point as a step over its interval; a gap where nothing was measured.
    const y = (v, max) => top + h - (h * v) / max;
    g.fillStyle = "rgba(37, 99, 235, .35)";
    g.strokeStyle = "#2563eb";
    for (const p of shown) {
      const x0 = x(p.at_ms - p.seconds * 1000), x1 = x(p.at_ms);
      const yy = y(p.bytes_per_s, maxBytes);
      g.fillRect(x0, yy, Math.max(1, x1 - x0), top + h - yy);
    }
    g.beginPath();
    let last = null;
    for (const p of shown) {
      const x0 = x(p.at_ms - p.seconds * 1000), x1 = x(p.at_ms), yy = y(p.requests_per_s, maxRate);
      if (last === null || Math.abs(last - (p.at_ms - p.seconds * 1000)) > 1000) g.moveTo(x0, yy); else g.lineTo(x0, yy);
      g.lineTo(x1, yy);
      last = p.at_ms;
    }
    g.strokeStyle = "#d97706";
    g.lineWidth = 2;
    g.stroke();
  }

  // ---- nodes waiting to be pinned ----------------------------------------------------------

  async function refreshWaiting() {
    const waiting = await api("/v1/peers/pending");
    const body = $("#pending-peers tbody");
    const existing = new Map([...body.querySelectorAll("tr[data-fingerprint]")].map((tr) => [tr.dataset.fingerprint, tr]));
    const rows = waiting.map((k) => {
      const row = existing.get(k.fingerprint) || waitingRow(k);
      row.cells[1].textContent = k.address;
      row.cells[3].textContent = when(k.last_seen);
      row.cells[4].textContent = k.attempts;
      return row;
    });
    if (rows.length === 0) rows.push(el("tr", {}, el("td", { colSpan: 6, class: "muted", text: "no node waits" })));
    body.replaceChildren(...rows);
  }

  // The hex digits of a fingerprint as an admin may type or read it.
  function hexOf(text) { return text.trim().toLowerCase().replace(/^sha256:/, "").replace(/[\s:]/g, ""); }

  function waitingRow(k) {
    const open = el("button", { type: "button", class: "accept", text: "Accept…" });
    const name = el("input", { type: "text", class: "name", placeholder: "name to pin it under", size: 14 });
    const confirm = el("input", { type: "text", class: "confirm", size: 24,
      placeholder: "its fingerprint, as its admin reads it (8+ hex digits)" });
    const pin = el("button", { type: "button", class: "pin approve", text: "Pin", disabled: true });
    const status = el("span", { class: "muted status" });
    const form = el("div", { class: "editor", hidden: true }, name, confirm, pin);
    const whole = hexOf(k.fingerprint);
    const check = () => {
      const typed = hexOf(confirm.value);
      const matches = typed.length >= 8 && /^[0-9a-f]+$/.test(typed) && whole.startsWith(typed);
      pin.disabled = !(matches && name.value.trim());
      confirm.classList.toggle("error", typed.length >= 8 && !matches);
      status.className = "muted status";
      status.textContent = typed.length >= 8 && !matches ? "does not match: do not pin it" : "";
    };
    name.addEventListener("input", check);
    confirm.addEventListener("input", check);
    open.addEventListener("click", () => { form.hidden = false; open.hidden = true; name.focus(); });
    pin.addEventListener("click", async () => {
      pin.disabled = true;
      status.textContent = "pinning…";
      try {
        const done = await api("/v1/peers/pending/accept", { method: "POST",
          body: { name: name.value.trim(), fingerprint: hexOf(confirm.value) } });
        status.textContent = `pinned as ${done.name} at ${done.address}; ${done.summary}`;
        form.hidden = true;
      } catch (e) {
        status.className = "error status";
        status.textContent = e.message;
        check();
      }
      schedule("waiting", "stats", "services");
    });
    return el("tr", { "data-fingerprint": k.fingerprint },
      el("td", {}, el("code", { text: k.fingerprint })),
      el("td", { text: k.address }),
      el("td", { text: when(k.first_seen) }),
      el("td", { text: when(k.last_seen) }),
      el("td", { class: "num", text: k.attempts }),
      el("td", { class: "answer" }, open, form, status));
  }

  // ---- services ----------------------------------------------------------------------------

  async function refreshServices() {
    // The peers too: a service's allow list is chosen among them.
    const [list, peers] = await Promise.all([api("/v1/services"), api("/v1/peers")]);
    services = list;
    peerNames = peers.map((p) => p.name);
    const body = $("#services tbody");
    const existing = new Map([...body.querySelectorAll("tr[data-service]")].map((tr) => [tr.dataset.service, tr]));
    const rows = services.map((s) => {
      const old = existing.get(s.id);
      // A row being changed keeps its controls; it shows the new values once saved or closed.
      if (old && old.querySelector(".editor:not([hidden])")) return old;
      const row = serviceRow(s);
      // The line saying what the last change did stays with its row (and the row keeps its shape).
      const said = old?.querySelector(".status");
      if (said) {
        const status = row.querySelector(".status");
        status.textContent = said.textContent;
        status.className = said.className;
      }
      return row;
    });
    if (rows.length === 0) rows.push(el("tr", {}, el("td", { colSpan: 5, class: "muted", text: "no service is configured" })));
    body.replaceChildren(...rows);
    fillChoices($("#f-service"), "any service", services.map((s) => s.id));
  }

  function callersText(s) {
    if (s.allow.includes("*")) return "every configured peer (*)" + (s.callers.length ? ": " + s.callers.join(", ") : "");
    return s.callers.length ? s.callers.join(", ") : "nobody";
  }

  function serviceRow(s) {
    const open = el("button", { type: "button", class: "edit", text: "Change…" });
    const state = el("select", { class: "state" },
      ...["active", "deprecated", "disabled"].map((v) => el("option", { value: v, text: v })));
    state.value = s.state;
    const every = el("input", { type: "checkbox", class: "allow", value: "*", checked: s.allow.includes("*") });
    const names = [...new Set([...peerNames, ...s.allow.filter((n) => n !== "*")])];
    const boxes = names.map((n) => el("label", {},
      el("input", { type: "checkbox", class: "allow", value: n, checked: s.allow.includes(n) }), " " + n));
    const save = el("button", { type: "button", class: "save approve", text: "Save" });
    const cancel = el("button", { type: "button", class: "cancel", text: "Cancel" });
    const status = el("span", { class: "muted status" });
    const form = el("div", { class: "editor", hidden: true }, state,
      el("label", {}, every, " every peer (*)"), ...boxes, save, cancel);
    open.addEventListener("click", () => { form.hidden = false; open.hidden = true; });
    cancel.addEventListener("click", () => { form.hidden = true; open.hidden = false; schedule("services"); });
    save.addEventListener("click", async () => {
      const allow = [...form.querySelectorAll("input.allow:checked")].map((b) => b.value);
      save.disabled = true;
      status.className = "muted status";
      status.textContent = "saving…";
      try {
        const done = await api("/v1/services/" + encodeURIComponent(s.id), { method: "PATCH",
          body: { state: state.value, allow: allow.includes("*") ? ["*"] : allow } });
        status.textContent = done.change;
        form.hidden = true;
        open.hidden = false;
      } catch (e) {
        status.className = "error status";
        status.textContent = e.message;
      }
      save.disabled = false;
      // The row shows the node's table after the reload, its status line carried over.
      await refreshServices();
    });
    return el("tr", { "data-service": s.id },
      el("td", {}, el("code", { text: s.id })),
      el("td", {}, el("code", { text: s.base_url })),
      el("td", {}, badge(s.state)),
      el("td", { class: "callers", text: callersText(s), title: "allow = " + JSON.stringify(s.allow) }),
      el("td", { class: "answer" }, open, form, status));
  }

  // ---- requests: filtered, paged by the node ----------------------------------------------

  let requestsNext = null;
  let requestsPaged = false;

  function requestQuery() {
    const q = new URLSearchParams();
    for (const [param, id] of [["direction", "#f-direction"], ["state", "#f-state"], ["peer", "#f-peer"], ["service", "#f-service"]]) {
      if ($(id).value) q.set(param, $(id).value);
    }
    const text = $("#f-q").value.trim();
    if (text) q.set("q", text);
    q.set("limit", "50");
    return q;
  }

  // The first page (`more`: the next one) of the requests the filters choose.
  async function refreshRequests(more) {
    if (!more && requestsPaged) return; // the list is scrolled back; "more" and the filters refresh it
    const q = requestQuery();
    if (more) q.set("before", requestsNext);
    const asked = q.toString();
    const page = await api("/v1/requests?" + asked);
    if (asked.replace(/&before=[^&]*/, "") !== requestQuery().toString()) return; // the filters changed meanwhile
    const rows = page.items.map((r) => el("tr", { "data-id": r.id, class: r.id === detailId ? "chosen" : "" },
      el("td", { text: when(r.created_at) }),
      ...requestCells(r),
      el("td", { class: "error", text: r.error || "" })));
    const body = $("#requests tbody");
    if (more) {
      body.querySelector("tr.none")?.remove();
      body.append(...rows);
      requestsPaged = true;
    } else {
      if (rows.length === 0) rows.push(el("tr", { class: "none" }, el("td", { colSpan: 8, class: "muted", text: "no request matches" })));
      body.replaceChildren(...rows);
    }
    requestsNext = page.next;
    $("#requests-more").hidden = !page.next;
    $("#requests").dataset.count = String(body.querySelectorAll("tr[data-id]").length);
    $("#requests-note").textContent = requestsPaged ? "older pages loaded: new requests show once the filters change" : "";
  }

  function filtersChanged() {
    requestsPaged = false;
    refreshRequests(false).catch(report);
  }

  // ---- one request in detail ---------------------------------------------------------------

  async function openDetail(id) {
    detailId = id;
    $("#detail").hidden = false;
    $("#detail-id").textContent = id;
    for (const tr of document.querySelectorAll("#requests tr[data-id]")) tr.classList.toggle("chosen", tr.dataset.id === id);
    await refreshDetail();
    $("#detail").scrollIntoView({ block: "start" });
  }

  function fact(name, value) {
    return [el("dt", { text: name }), el("dd", {}, value === null || value === undefined || value === "" ? "–" : value)];
  }

  async function refreshDetail() {
    const id = detailId;
    if (!id) return;
    const enc = encodeURIComponent(id);
    const [r, evidence] = await Promise.all([
      api("/v1/requests/" + enc).catch((e) => { if (e instanceof Refused) throw e; return { missing: e.message }; }),
      api("/v1/requests/" + enc + "/evidence").catch((e) => { if (e instanceof Refused) throw e; return { records: [], missing: e.message }; }),
    ]);
    if (id !== detailId) return;
    const detail = $("#detail");
    detail.dataset.id = id;
    $("#detail-error").textContent = r.missing ? r.missing : "";
    $("#detail-summary").replaceChildren(...(r.missing ? [] : [
      ...fact("state", badge(r.state)),
      ...fact("error", r.error ? el("span", { class: "error", text: r.error }) : null),
      ...fact("direction", r.direction),
      ...fact("peer", r.peer),
      ...fact("service", r.service),
      ...fact("call", el("code", { text: `${r.method} ${r.path}` })),
      ...fact("mode", r.reply ? "async, replies awaited" : "async"),
      ...fact("conversation", r.conversation),
      ...fact("created", when(r.created_at)),
      ...fact("updated", when(r.updated_at)),
      ...fact("attempts", String(r.attempts)),
      ...fact("response", r.response ? `HTTP ${r.response.status}` : null),
    ]));
    // The file of the request, and those of its replies.
    const files = [];
    if (r.transfer) {
      const t = r.transfer;
      const live = transfers.get(id);
      const done = live ? Math.max(live.done, t.bytes_done || 0) : t.bytes_done || 0;
      const bar = t.size ? progressBar(id, { done, total: t.size, rate: t.bytes_per_s }) : "";
      files.push(el("div", { class: "transfer", "data-name": t.name },
        el("div", {}, el("strong", { text: t.name }), ` · ${bytes(t.size)} · `,
          t.moving ? "moving" : done >= t.size ? "through" : "not moving now"),
        bar,
        el("div", {}, "SHA-256 ", el("code", { class: "sha256", text: t.sha256 || "not known until it is through" }))));
    }
    for (const reply of r.replies || []) {
      if (!reply.file_info) continue;
      // The node that sent a reply's file keeps its size and SHA-256 in the reply's evidence record.
      const recorded = (evidence.records || []).find((e) => e.reply_seq === reply.seq && e.file && e.file.sha256);
      const info = Object.assign({}, reply.file_info);
      if (recorded) { info.size = info.size ?? recorded.file.size; info.sha256 = info.sha256 || recorded.file.sha256; }
      const live = !r.transfer && transfers.get(id);
      files.push(el("div", { class: "transfer", "data-name": info.name },
        el("div", {}, el("strong", { text: info.name }), ` · reply ${reply.seq} · ${bytes(info.size)}`),
        live ? progressBar(id, live) : "",
        el("div", {}, "SHA-256 ", el("code", { class: "sha256", text: info.sha256 || "not known until it is through" }))));
    }
    $("#detail-transfer").replaceChildren(...(files.length ? files : ["no file"]));
    const replies = (r.replies || []).map((p) => el("tr", { "data-seq": p.seq },
      el("td", { class: "num", text: p.seq }),
      el("td", { text: when(p.received_at) }),
      el("td", { text: p.end ? "last" : "more to come" }),
      el("td", {}, p.data === null ? "" : el("code", { class: "data", text: JSON.stringify(p.data) })),
      el("td", {}, p.file_info ? `${p.file_info.name} (${bytes(p.file_info.size)})` : p.file ? el("code", { text: p.file }) : ""),
      el("td", { class: "error", text: p.error || "" }),
      el("td", { text: p.delivered ? "yes" : "not yet" })));
    if (replies.length === 0) replies.push(el("tr", {}, el("td", { colSpan: 7, class: "muted", text: "no reply" })));
    $("#detail-replies tbody").replaceChildren(...replies);
    const c = r.callback;
    $("#detail-callback").textContent = c
      ? `${c.method} ${c.url} · ${c.delivered ? "delivered" : "not delivered yet"} · ${c.attempts} attempt(s)` +
        (c.last_error ? ` · last error: ${c.last_error}` : "")
      : "no callback";
    const attempts = ((c && c.history) || []).slice().reverse().map((a) => el("tr", { "data-seq": a.seq },
      el("td", { text: when(a.at) }),
      el("td", { text: `result ${a.seq}: ` + (a.error ? "not delivered" : "delivered") }),
      el("td", { class: "num", text: a.status === null ? "no answer" : String(a.status) }),
      el("td", { class: "error", text: a.error || "" })));
    if (c && attempts.length === 0) attempts.push(el("tr", {}, el("td", { colSpan: 4, class: "muted", text: "no attempt since the node started" })));
    $("#detail-attempts tbody").replaceChildren(...attempts);
    const records = (evidence.records || []).map((e) => el("tr", { "data-seq": e.seq },
      el("td", { class: "num", text: e.seq }),
      el("td", { text: when(e.at) }),
      el("td", { text: e.event }),
      el("td", { text: e.direction }),
      el("td", { text: e.reply_seq ?? "" }),
      el("td", {}, el("code", { class: "hash", text: e.hash || "", title: e.hash }))));
    if (records.length === 0) records.push(el("tr", {}, el("td", { colSpan: 6, class: "muted", text: evidence.missing || "no record" })));
    $("#detail-evidence tbody").replaceChildren(...records);
    detail.dataset.loaded = String(Date.now());
  }

  // ---- start -------------------------------------------------------------------------------

  async function start() {
    $("#refused").hidden = true;
    let health;
    try {
      health = await api("/v1/health");
    } catch (e) {
      if (!(e instanceof Refused)) {
        $("#loading").hidden = true;
        $("#refused").hidden = false;
        $("#refused").textContent = "The node does not answer: " + e.message;
      }
      return;
    }
    started = true;
    if (!socket) setLive(false, "connecting");
    $("#login").hidden = true;
    $("#loading").hidden = !$("#console").hidden;
    $("#forget").hidden = !token;
    $("#node-name").textContent = health.name + " · " + health.version;
    $("#node-fingerprint").textContent = health.fingerprint;
    document.title = "ferry · " + health.name;
    // Everything is fetched before the panels show, so that none shows empty for want of data.
    // Services first: the requests' service filter and the peers' names come with them.
    await Promise.all([refreshStats(), refreshServices()].map((p) => p.catch(report)));
    const first = Object.entries(refreshers).filter(([name]) => !["stats", "services"].includes(name));
    await Promise.all(first.map(([, r]) => r().catch(report)));
    if (!started) return; // refused meanwhile: the token form shows
    $("#loading").hidden = true;
    $("#console").hidden = false;
    drawChart();
    setLive(false, "connecting");
    if (!socket) connect();
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
    $("#chart-span").addEventListener("change", drawChart);
    for (const id of ["#f-direction", "#f-state", "#f-peer", "#f-service"]) $(id).addEventListener("change", filtersChanged);
    let typing = null;
    $("#f-q").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(filtersChanged, 300); });
    $("#filters").addEventListener("submit", (e) => { e.preventDefault(); filtersChanged(); });
    $("#f-clear").addEventListener("click", () => {
      for (const id of ["#f-direction", "#f-state", "#f-peer", "#f-service", "#f-q"]) $(id).value = "";
      filtersChanged();
    });
    $("#requests-more").addEventListener("click", () => refreshRequests(true).catch(report));
    $("#detail-close").addEventListener("click", () => {
      detailId = null;
      $("#detail").hidden = true;
      for (const tr of document.querySelectorAll("#requests tr.chosen")) tr.classList.remove("chosen");
    });
    setInterval(() => { if (started) drawChart(); }, 5000);
    // The node adds a point every `every_s` seconds.
    setInterval(() => { if (started) refreshHistory().catch(report); }, 5000);
    setInterval(() => { if (started) renderInflight(); }, 30000);
    setInterval(() => { if (started) schedule("waiting"); }, 10000);
    start();
  });
})();
