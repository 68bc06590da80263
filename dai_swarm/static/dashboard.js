// dai-swarm dashboard: polls this peer's /status.json once a second and redraws. No build step,
// no third-party code. Figures that the peer does not report are shown as "–", never invented.
"use strict";

const $ = (id) => document.getElementById(id);
const short = (s, n = 10) => (s ? String(s).slice(0, n) : "–");
const tail = (s, n = 10) => (s ? "…" + String(s).slice(-n) : "–");
const num = (x, d = 4) => (typeof x === "number" && isFinite(x) ? x.toFixed(d) : "–");
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

function bytes(n) {
  if (typeof n !== "number") return "–";
  const u = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < u.length - 1) { n /= 1000; i++; }
  return n.toFixed(i ? 1 : 0) + " " + u[i];
}

function total(side) { return side ? Object.values(side).reduce((a, b) => a + b, 0) : undefined; }

function svgEl(tag, attrs, text) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function drawLoss(svg, history) {
  svg.replaceChildren();
  const pts = history.filter((h) => typeof h.val_loss === "number").map((h) => [h.swarm_samples, h.val_loss]);
  const W = 640, H = 260, L = 48, B = 24, T = 10, R = 10;
  svg.appendChild(svgEl("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
  svg.appendChild(svgEl("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }));
  if (pts.length === 0) { svg.appendChild(svgEl("text", { x: L + 10, y: H / 2 }, "no closed round yet")); return; }
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1), y0 = Math.min(...ys), y1 = Math.max(...ys, y0 + 1e-6);
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R), sy = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - B - T);
  svg.appendChild(svgEl("polyline", { points: pts.map((p) => sx(p[0]) + "," + sy(p[1])).join(" "), class: "loss" }));
  for (const p of pts.slice(-1)) svg.appendChild(svgEl("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 3, class: "dot" }));
  svg.appendChild(svgEl("text", { x: 4, y: T + 10 }, y1.toFixed(3)));
  svg.appendChild(svgEl("text", { x: 4, y: H - B }, y0.toFixed(3)));
  svg.appendChild(svgEl("text", { x: L, y: H - 6 }, String(x0)));
  svg.appendChild(svgEl("text", { x: W - R - 70, y: H - 6 }, x1 + " samples"));
}

function drawBytes(svg, history) {
  svg.replaceChildren();
  const W = 320, H = 260, B = 20, T = 10;
  const rows = [];
  for (let i = 1; i < history.length; i++) {
    const a = history[i - 1].traffic, b = history[i].traffic;
    if (!a || !b) continue;
    const d = (link) => ["sent", "received"].reduce((s, dir) => s + ((b[dir] || {})[link] || 0) - ((a[dir] || {})[link] || 0), 0);
    rows.push([Math.max(0, d("intra")), Math.max(0, d("cross"))]);
  }
  const shown = rows.slice(-30);
  if (shown.length === 0) { svg.appendChild(svgEl("text", { x: 10, y: H / 2 }, "needs two closed rounds")); return; }
  const top = Math.max(...shown.map((r) => r[0] + r[1]), 1), w = W / shown.length;
  shown.forEach(([intra, cross], i) => {
    const hi = (intra / top) * (H - B - T), hc = (cross / top) * (H - B - T);
    svg.appendChild(svgEl("rect", { x: i * w + 1, y: H - B - hi, width: w - 2, height: hi, fill: "#58a6ff" }));
    svg.appendChild(svgEl("rect", { x: i * w + 1, y: H - B - hi - hc, width: w - 2, height: hc, fill: "#d29922" }));
  });
  svg.appendChild(svgEl("text", { x: 4, y: T + 10 }, bytes(top) + " / round"));
}

function renderPeers(doc) {
  const byRegion = {};
  for (const p of doc.peers || []) (byRegion[p.region] = byRegion[p.region] || []).push(p);
  const ra = doc.region_agreement || {};
  const parts = [];
  for (const region of Object.keys(byRegion).sort()) {
    const majority = ra[region] ? ra[region].state_hash : null;
    const rows = byRegion[region].map((p) => {
      const at = ra[region] ? ra[region].round : null;
      const cls = !p.state_hash || !majority ? "" : p.state_hash === majority ? "agree"
        : p.round_closed !== undefined && p.round_closed !== null && p.round_closed < at ? "behind" : "disagree";
      return `<tr class="peer${p.self ? " self" : ""}" data-peer-id="${esc(p.peer_id)}"><td class="mono" title="${esc(p.peer_id)}">${esc(tail(p.peer_id, 12))}${p.self ? " (this peer)" : ""}</td>` +
        `<td>${p.round ?? "–"}</td><td class="mono ${cls}">${esc(short(p.state_hash))}</td><td>${num(p.val_loss)}</td>` +
        `<td>${p.samples ?? "–"}</td><td>${p.reputation ?? "–"}</td><td>${num(p.age_s, 1)} s</td></tr>`;
    });
    parts.push(`<div class="region" data-region="${esc(region)}"><h3>${esc(region)} · ${byRegion[region].length} peer(s)</h3>` +
      `<table><thead><tr><th>peer</th><th>round</th><th>state hash</th><th>val loss</th><th>samples</th><th>reputation</th><th>record age</th></tr></thead>` +
      `<tbody>${rows.join("")}</tbody></table></div>`);
  }
  $("regions").innerHTML = parts.join("") || "no peer records yet";
}

function render(doc) {
  $("run-id").textContent = doc.run_id || "…";
  $("whoami").textContent = `peer ${tail(doc.peer_id, 12)} · region ${doc.region} · task ${doc.task || "?"}`;
  $("round").textContent = doc.round ?? "–";
  $("steps").textContent = `${doc.steps ?? 0} inner steps · ${doc.rounds_trained ?? 0} rounds trained`;
  $("val-loss").textContent = num(doc.val_loss);
  $("samples").textContent = `${doc.samples ?? 0} samples · ${num(doc.samples_per_s, 1)}/s`;
  const ag = doc.agreement;
  $("agreement").textContent = ag ? `${ag.agree}/${ag.total}` : "–";
  $("agreement").className = "value " + (ag ? (ag.agree === ag.total ? "agree" : "disagree") : "");
  $("agreement-hash").textContent = ag ? `${ag.region} · round ${ag.round} · ${short(ag.state_hash, 12)}` : "no closed round yet";
  $("peer-count").textContent = (doc.peers || []).length;
  $("region-count").textContent = Object.entries(doc.regions || {}).map(([r, n]) => `${r}: ${n}`).join(" · ");
  const t = doc.traffic || {};
  $("bytes").textContent = `${bytes(total(t.sent))} / ${bytes(total(t.received))}`;
  $("bytes-split").textContent = `intra ${bytes(total({ a: (t.sent || {}).intra || 0, b: (t.received || {}).intra || 0 }))} · cross ${bytes(total({ a: (t.sent || {}).cross || 0, b: (t.received || {}).cross || 0 }))}`;
  $("reputation").textContent = typeof doc.reputation === "number" ? doc.reputation.toFixed(3) : "–";
  $("rewards").textContent = doc.rewards !== undefined ? `rewards ${JSON.stringify(doc.rewards)}` : "rewards not reported";
  const v = doc.verification;
  $("verification").innerHTML = v
    ? `<table><tr><th>spot checks</th><td>${v.checks ?? "–"}</td></tr><tr><th>re-checks</th><td>${v.rechecks ?? "–"}</td></tr>` +
      `<tr><th>fail verdicts issued</th><td>${v.fails ?? "–"}</td></tr><tr><th>invalid verdicts seen</th><td>${v.invalid_verdicts ?? "–"}</td></tr>` +
      `<tr><th>mean latency</th><td>${num(doc.verification_latency_s, 2)} s</td></tr><tr><th>this peer slashed</th><td>${v.slashed ?? "–"}</td></tr></table>`
    : "no verification figures reported by this peer";
  const sl = doc.slashes;
  $("slashes").innerHTML = Array.isArray(sl) ? (sl.length ? sl.map((k) => `<div class="mono disagree">${esc(short(k, 16))}</div>`).join("") : "no key slashed") : "none reported";
  const hist = doc.history || [];
  $("rounds").tBodies[0].innerHTML = hist.slice(-12).reverse().map((h) =>
    `<tr><td>${h.round}</td><td>${h.updates}</td><td class="mono">${esc(short(h.state_hash, 12))}</td><td>${h.agreed}</td>` +
    `<td>${h.resynced}</td><td>${num(h.val_loss)}</td><td>${h.samples}</td><td>${num(h.round_s, 1)}</td></tr>`).join("");
  renderPeers(doc);
  drawLoss($("loss-chart"), hist);
  drawBytes($("bytes-chart"), hist);
}

let lastOk = 0;
async function poll() {
  try {
    const r = await fetch("/status.json", { cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    const doc = await r.json();
    render(doc);
    lastOk = Date.now();
    $("live").className = "ok";
    $("live").textContent = `live · updated ${new Date(doc.time * 1000).toLocaleTimeString()}`;
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  } catch (e) {
    $("live").className = "stale";
    $("live").textContent = lastOk ? `peer unreachable for ${Math.round((Date.now() - lastOk) / 1000)} s` : "cannot reach this peer";
  }
}
poll();
setInterval(poll, 1000);
