// icerelay live page: renders the snapshots /api/events sends (server-sent events).
// Everything shown comes from SIP (call-ids, tags, user agents): it is written with
// textContent only, never as HTML, so a hostile Call-ID cannot run script here.
"use strict";

const HISTORY = 60; // chart points kept per stream (one per update)
const history = new Map(); // stream key -> {last: {t, a, b}, points: [[bpsA, bpsB], ...]}

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

function time(ts) {
  if (ts == null) return "–";
  return new Date(ts * 1000).toLocaleTimeString();
}

function rate(bps) {
  if (bps == null) return "–";
  if (bps >= 1e6) return (bps / 1e6).toFixed(2) + " Mb/s";
  if (bps >= 1e3) return (bps / 1e3).toFixed(1) + " kb/s";
  return Math.round(bps) + " b/s";
}

function bytes(n) {
  if (n >= 1e6) return (n / 1e6).toFixed(1) + " MB";
  if (n >= 1e3) return (n / 1e3).toFixed(1) + " kB";
  return n + " B";
}

// Bits per second in each direction since the previous snapshot, kept for the chart.
function track(stream, now) {
  let entry = history.get(stream.key);
  const a = stream.caller.bytes, b = stream.callee.bytes;
  if (!entry) {
    entry = { last: { t: now, a, b }, points: [] };
    history.set(stream.key, entry);
    return entry;
  }
  const dt = now - entry.last.t;
  if (dt > 0) {
    entry.points.push([((a - entry.last.a) * 8) / dt, ((b - entry.last.b) * 8) / dt]);
    if (entry.points.length > HISTORY) entry.points.shift();
    entry.last = { t: now, a, b };
  }
  entry.seen = now;
  return entry;
}

function chart(points) {
  const canvas = el("canvas", { class: "chart", width: "180", height: "40" });
  const ctx = canvas.getContext("2d");
  const max = Math.max(1, ...points.flat());
  // Spread over what is there (at least 10 points), so a new call draws a readable line.
  const span = Math.max(10, points.length) - 1;
  const style = getComputedStyle(document.documentElement);
  [0, 1].forEach((side) => {
    ctx.strokeStyle = style.getPropertyValue(side ? "--callee" : "--caller").trim() || "#000";
    ctx.beginPath();
    points.forEach((point, i) => {
      const x = (i / span) * 180;
      const y = 38 - (point[side] / max) * 36;
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  });
  return canvas;
}

function renderSession(session, now) {
  const title = el("h3", {},
    el("span", { class: "call-id", text: session.call_id }),
    el("span", { class: "muted", text: `  ${session.from_tag || ""} ↔ ${session.to_tag || "(no answer yet)"}  ·  ${session.state} · since ${time(session.created)}` }));
  const rows = session.streams.map((stream) => {
    const entry = track(stream, now);
    const last = entry.points[entry.points.length - 1] || [null, null];
    const ice = stream.ice;
    const iceText = ice.step_aside
      ? `stepped aside ${time(ice.step_aside_time)}`
      : ice.state;
    return el("tr", { "data-stream": stream.key },
      el("td", { text: `${stream.index} ${stream.media}${stream.codec ? " " + stream.codec : ""}` }),
      el("td", { text: `${stream.relay_ports.caller ?? "–"} / ${stream.relay_ports.callee ?? "–"}` }),
      el("td", {}, el("div", { class: "caller", text: stream.caller.latched_rtp || stream.sdp_peers.caller || "–" }),
                   el("div", { class: "callee", text: stream.callee.latched_rtp || stream.sdp_peers.callee || "–" })),
      el("td", { class: "ice-" + ice.state, text: iceText }),
      el("td", { class: "num" }, el("div", { class: "caller", text: `${stream.caller.packets} pk · ${bytes(stream.caller.bytes)}` }),
                                 el("div", { class: "callee", text: `${stream.callee.packets} pk · ${bytes(stream.callee.bytes)}` })),
      el("td", { class: "num" }, el("div", { class: "caller", text: rate(last[0]) }),
                                 el("div", { class: "callee", text: rate(last[1]) })),
      el("td", {}, chart(entry.points)));
  });
  const table = el("table", {},
    el("thead", {}, el("tr", {}, ...["stream", "relay ports", "latched (caller / callee)", "ICE",
      "received", "bitrate", "last minute"].map((h) => el("th", { text: h })))),
    el("tbody", {}, ...rows));
  return el("div", { class: "session", "data-call-id": session.call_id }, title, table);
}

function renderAllocations(allocations) {
  const table = document.getElementById("allocations");
  const body = table.querySelector("tbody");
  body.replaceChildren(...allocations.map((a) => el("tr", { "data-client": a.client },
    el("td", { text: `${a.client} (${a.transport})` }),
    el("td", { text: a.username }),
    el("td", { text: a.relayed.join(", ") }),
    el("td", { text: a.permissions.join(", ") || "–" }),
    el("td", { text: a.channels.map((c) => `${c.number.toString(16)}→${c.peer}`).join(", ") || "–" }),
    el("td", { class: "num", text: `${a.packets_to_peers} pk · ${bytes(a.bytes_to_peers)}` }),
    el("td", { class: "num", text: `${a.packets_to_client} pk · ${bytes(a.bytes_to_client)}` }),
    el("td", { class: "num", text: `${a.expires_in} s` }))));
  table.hidden = allocations.length === 0;
  document.getElementById("no-allocations").hidden = allocations.length !== 0;
  document.getElementById("allocation-count").textContent = allocations.length;
}

function render(snapshot) {
  const now = snapshot.time;
  const container = document.getElementById("sessions");
  container.replaceChildren(...snapshot.sessions.map((s) => renderSession(s, now)));
  document.getElementById("no-sessions").hidden = snapshot.sessions.length !== 0;
  document.getElementById("session-count").textContent = snapshot.sessions.length;
  for (const [key, entry] of history) if (entry.seen !== now && entry.last.t !== now) history.delete(key);
  renderAllocations(snapshot.allocations);
  document.getElementById("draining").hidden = !snapshot.draining;
  const r = snapshot.relayed;
  document.getElementById("totals").textContent = r
    ? `relayed ${r.packets} packets, ${bytes(r.bytes)}; dropped ${r.dropped}` : "";
}

function connect() {
  const status = document.getElementById("status");
  const source = new EventSource("/api/events");
  source.addEventListener("snapshot", (message) => {
    status.dataset.state = "live";
    status.textContent = "live";
    render(JSON.parse(message.data));
  });
  source.onerror = () => {
    // EventSource reconnects by itself (the server sets retry:); just say so.
    status.dataset.state = "lost";
    status.textContent = "reconnecting…";
  };
}

connect();
