// pipeobs web explorer: the parts of the pages that move (timeline, charts, logs, live updates).
// User text only ever reaches the DOM through textContent or attribute values, never as markup.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const LANE_H = 18, LANE_GAP = 4, LABEL_W = 150, AXIS_H = 20;

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function svgEl(tag, attrs, title) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (title) {
    const t = document.createElementNS(SVG, "title");
    t.textContent = title;
    node.appendChild(t);
  }
  return node;
}

async function getJSON(url) {
  const response = await fetch(url, {headers: {accept: "application/json"}});
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function fmtSeconds(s) {
  if (s === null || s === undefined || typeof s !== "number") return "-";
  if (s < 1e-3) return (s * 1e6).toFixed(0) + " µs";
  if (s < 1) return (s * 1e3).toFixed(1) + " ms";
  if (s < 120) return s.toFixed(2) + " s";
  if (s < 7200) return (s / 60).toFixed(1) + " min";
  return (s / 3600).toFixed(2) + " h";
}

function fmtTime(epoch) {
  return new Date(epoch * 1000).toISOString().replace("T", " ").replace("Z", "");
}

function statusClass(status) {
  switch (status) {
    case "RUN_DONE": return "st-ok";
    case "RUNNING": return "st-running";
    case "RUN_TIMEOUT": case "PROCESS_CRASHED": case "KILLED": case "NODE_LOST": return "st-timeout";
    default: return "st-failed";
  }
}

// ----------------------------------------------------------------------------- timeline
class Timeline {
  constructor(root, minimap, tooltip) {
    this.root = root;
    this.minimap = minimap;
    this.tooltip = tooltip;
    this.api = root.dataset.api;
    this.mbUrl = root.dataset.mbUrl;
    const q = new URLSearchParams(location.search);
    this.view = q.has("start") && q.has("end") ? {start: +q.get("start"), end: +q.get("end")} : null;
    this.follow = !this.view;
    this.run = null;
    this.pending = null;
    this.bind();
  }

  width() { return Math.max(200, this.root.clientWidth - LABEL_W - 2); }

  async load() {
    const params = new URLSearchParams({width: String(this.width())});
    if (this.view && !this.follow) { params.set("start", this.view.start); params.set("end", this.view.end); }
    const asked = this.asked = (this.asked || 0) + 1;
    const data = await getJSON(`${this.api}?${params}`);
    if (asked !== this.asked) return;  // a later request (a zoom, a drag, a live poll) is on its way
    this.run = data.run;
    this.view = {start: data.view.start, end: data.view.end};
    this.data = data;
    this.draw(data);
    document.getElementById("view-range").textContent =
      `${fmtSeconds(this.view.start - this.run.start)} – ${fmtSeconds(this.view.end - this.run.start)} of ${fmtSeconds(this.run.end - this.run.start)}` +
      (data.mode === "density" ? ` · ${data.attempts_in_view} attempts, aggregated per pixel` : "");
    if (!params.has("start") && (!this.miniData || this.run.live || this.miniStale)) {
      this.miniData = data;  // the whole run is in view: the minimap draws the same answer
      this.miniStale = false;
      this.drawMinimap(data);
    } else if (!this.miniData || this.run.live || this.miniStale) await this.loadMinimap();
    else this.drawBrush();
  }

  async loadMinimap() {
    const w = this.width();
    this.miniData = await getJSON(`${this.api}?width=${w}`);
    this.miniStale = false;
    this.drawMinimap(this.miniData);
  }

  x(t, w) { return (t - this.view.start) / (this.view.end - this.view.start) * w; }

  draw(data) {
    const w = this.width();
    const lanes = data.lanes;
    const h = AXIS_H + lanes.length * (LANE_H + LANE_GAP);
    const svg = svgEl("svg", {width: w + LABEL_W, height: h, class: "lanes", role: "img"});
    const plot = svgEl("g", {transform: `translate(${LABEL_W},0)`});
    this.drawAxis(plot, w);
    lanes.forEach((lane, i) => {
      const y = AXIS_H + i * (LANE_H + LANE_GAP);
      const label = svgEl("text", {x: 4, y: y + LANE_H - 5, class: "lane-label"});
      label.textContent = lane.worker + (lane.pid ? ` (${lane.pid})` : "");
      svg.appendChild(label);
      plot.appendChild(svgEl("rect", {x: 0, y, width: w, height: LANE_H, class: "lane", "data-worker": lane.worker}));
      if (lane.ended !== null && lane.ended !== undefined && lane.returncode) {
        const ex = this.x(lane.ended, w);
        if (ex >= 0 && ex <= w) plot.appendChild(svgEl("path", {d: `M${ex},${y} l0,${LANE_H}`, class: "mk-exit"},
          `${lane.worker} exited with ${lane.returncode}${lane.reason ? ": " + lane.reason : ""}`));
      }
    });
    const laneY = i => AXIS_H + i * (LANE_H + LANE_GAP);
    for (const [lane, name, s, e, status, open] of data.phases) {
      if (lane < 0) continue;
      const x0 = Math.max(0, this.x(s, w)), x1 = Math.min(w, this.x(e, w));
      plot.appendChild(svgEl("rect", {x: x0, y: laneY(lane), width: Math.max(1, x1 - x0), height: 4,
        class: `phase ph-${name}${status === "ERROR" ? " ph-error" : ""}`},
        `${name}() ${fmtSeconds(e - s)}${open ? " (running)" : ""}${status === "ERROR" ? " failed" : ""}`));
    }
    if (data.mode === "density") {
      const colW = w / data.view.width;
      for (const [lane, col, count, failed, busy] of data.density) {
        if (lane < 0) continue;
        plot.appendChild(svgEl("rect", {x: col * colW, y: laneY(lane) + 4, width: Math.max(1, colW), height: LANE_H - 4,
          class: `cell ${failed ? "st-failed" : "st-ok"}`, "fill-opacity": (0.25 + 0.75 * busy).toFixed(2),
          "data-count": count}, `${count} mini-batches${failed ? `, ${failed} failed` : ""}; busy ${(busy * 100).toFixed(0)}%`));
      }
    }
    for (const bar of data.bars) {
      const [lane, s, e, mb, attempt, status, items, open] = bar;
      if (lane < 0) continue;
      const x0 = Math.max(0, this.x(s, w)), x1 = Math.min(w, this.x(e, w));
      const rect = svgEl("rect", {x: x0, y: laneY(lane) + 4, width: Math.max(1, x1 - x0), height: LANE_H - 4,
        class: `bar ${statusClass(status)}${open ? " open" : ""}`, "data-mb": mb, "data-attempt": attempt,
        "data-status": status, "data-duration": (e - s).toFixed(6), "data-items": items === null ? "" : items});
      plot.appendChild(rect);
    }
    for (const [lane, t, kind, text] of data.markers) {
      const mx = this.x(t, w);
      if (mx < 0 || mx > w) continue;
      const y = lane >= 0 ? laneY(lane) : AXIS_H;
      const hgt = lane >= 0 ? LANE_H : h - AXIS_H;
      plot.appendChild(svgEl("path", {d: `M${mx - 3},${y} l6,0 l-3,5 z M${mx},${y} l0,${hgt}`, class: `marker mk-${kind}`},
        `${kind}: ${text}`));
    }
    svg.appendChild(plot);
    this.root.replaceChildren(svg);
    this.svg = svg;
  }

  drawAxis(plot, w) {
    const span = this.view.end - this.view.start;
    const step = niceStep(span / Math.max(2, Math.floor(w / 110)));
    const first = Math.ceil((this.view.start - this.run.start) / step) * step;
    for (let rel = first; this.run.start + rel <= this.view.end; rel += step) {
      const x = this.x(this.run.start + rel, w);
      plot.appendChild(svgEl("path", {d: `M${x},${AXIS_H - 4} l0,4000`, class: "tick"}));
      const label = svgEl("text", {x: x + 2, y: AXIS_H - 7, class: "tick-label"});
      label.textContent = fmtSeconds(rel);
      plot.appendChild(label);
    }
  }

  drawMinimap(data) {
    const w = this.width();
    const n = Math.max(1, data.lanes.length);
    const h = 36, lh = h / n;
    const svg = svgEl("svg", {width: w + LABEL_W, height: h, class: "minimap-svg"});
    const g = svgEl("g", {transform: `translate(${LABEL_W},0)`});
    const x = t => (t - data.run.start) / (data.run.end - data.run.start) * w;
    if (data.mode === "density") {
      const colW = w / data.view.width;
      for (const [lane, col, , failed, busy] of data.density) {
        g.appendChild(svgEl("rect", {x: col * colW, y: lane * lh, width: Math.max(1, colW), height: lh,
          class: failed ? "st-failed" : "st-ok", "fill-opacity": (0.25 + 0.75 * busy).toFixed(2)}));
      }
    }
    for (const [lane, s, e, , , status] of data.bars) {
      g.appendChild(svgEl("rect", {x: x(s), y: lane * lh, width: Math.max(1, x(e) - x(s)), height: lh, class: statusClass(status)}));
    }
    this.brush = svgEl("rect", {y: 0, height: h, class: "brush"});
    g.appendChild(this.brush);
    svg.appendChild(g);
    this.minimap.replaceChildren(svg);
    this.miniScale = {x, w};
    this.drawBrush();
  }

  drawBrush() {
    if (!this.brush || !this.miniScale || !this.run) return;
    const {x} = this.miniScale;
    this.brush.setAttribute("x", x(this.view.start));
    this.brush.setAttribute("width", Math.max(2, x(this.view.end) - x(this.view.start)));
  }

  setView(start, end) {
    const min = this.run.start, max = this.run.end;
    const span = Math.max(1e-3, Math.min(end - start, max - min));
    start = Math.max(min, Math.min(start, max - span));
    this.view = {start, end: start + span};
    this.follow = this.run.live && this.view.end >= max - 1e-6 && this.view.start <= min + 1e-6;
    const q = new URLSearchParams(location.search);
    if (this.follow) { q.delete("start"); q.delete("end"); } else { q.set("start", start.toFixed(6)); q.set("end", (start + span).toFixed(6)); }
    history.replaceState(null, "", `${location.pathname}${q.toString() ? "?" + q : ""}`);
    this.schedule();
  }

  zoom(factor, at) {
    const span = this.view.end - this.view.start;
    const center = at === undefined ? this.view.start + span / 2 : at;
    const newSpan = span * factor;
    const ratio = (center - this.view.start) / span;
    this.setView(center - newSpan * ratio, center - newSpan * ratio + newSpan);
  }

  schedule() {
    clearTimeout(this.pending);
    this.drawBrush();
    this.pending = setTimeout(() => this.load().catch(showError), 60);
  }

  timeAt(clientX) {
    const box = this.root.getBoundingClientRect();
    const px = clientX - box.left - LABEL_W;
    return this.view.start + px / this.width() * (this.view.end - this.view.start);
  }

  bind() {
    this.root.addEventListener("wheel", event => {
      if (!this.run) return;
      event.preventDefault();
      this.zoom(event.deltaY < 0 ? 0.7 : 1 / 0.7, this.timeAt(event.clientX));
    }, {passive: false});
    let drag = null;
    this.root.addEventListener("mousedown", event => {
      if (!this.run) return;
      drag = {x: event.clientX, view: {...this.view}, moved: false};
    });
    window.addEventListener("mousemove", event => {
      if (drag) {
        const dx = event.clientX - drag.x;
        if (Math.abs(dx) > 3) drag.moved = true;
        if (drag.moved) {
          const dt = dx / this.width() * (drag.view.end - drag.view.start);
          this.setView(drag.view.start - dt, drag.view.end - dt);
        }
      }
    });
    window.addEventListener("mouseup", () => { setTimeout(() => { drag = null; }, 0); });
    this.root.addEventListener("click", event => {
      if (drag && drag.moved) return;
      const bar = event.target.closest("rect.bar");
      if (bar) location.href = this.mbUrl + bar.dataset.mb;
    });
    this.root.addEventListener("mousemove", event => this.hover(event));
    this.root.addEventListener("mouseleave", () => { this.tooltip.hidden = true; });
    const moveTo = event => {
      if (!this.miniScale) return;
      const box = this.minimap.getBoundingClientRect();
      const frac = (event.clientX - box.left - LABEL_W) / this.miniScale.w;
      const center = this.run.start + frac * (this.run.end - this.run.start);
      const span = this.view.end - this.view.start;
      this.setView(center - span / 2, center + span / 2);
    };
    let miniDrag = false;
    this.minimap.addEventListener("mousedown", event => { miniDrag = true; moveTo(event); });
    window.addEventListener("mousemove", event => { if (miniDrag) moveTo(event); });
    window.addEventListener("mouseup", () => { miniDrag = false; });
    document.getElementById("zoom-in").addEventListener("click", () => this.zoom(0.5));
    document.getElementById("zoom-out").addEventListener("click", () => this.zoom(2));
    document.getElementById("zoom-reset").addEventListener("click", () => this.setView(this.run.start, this.run.end));
    window.addEventListener("resize", () => { this.miniStale = true; this.schedule(); });
  }

  hover(event) {
    const target = event.target;
    if (!(target instanceof SVGElement) || !target.classList.contains("bar")) { this.tooltip.hidden = true; return; }
    const d = target.dataset;
    const lines = [`mini-batch ${d.mb}, attempt ${d.attempt}`, `${d.status === "RUNNING" ? "running for" : "took"} ${fmtSeconds(+d.duration)}`,
      `status ${d.status}`];
    if (d.items !== "") lines.push(`${d.items} items`);
    this.tooltip.replaceChildren(...lines.map(line => el("div", {}, line)));
    this.tooltip.hidden = false;
    const box = this.root.getBoundingClientRect();
    this.tooltip.style.left = `${event.clientX - box.left + 12}px`;
    this.tooltip.style.top = `${event.clientY - box.top + this.root.offsetTop + 12}px`;
  }
}

function niceStep(raw) {
  const steps = [1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400];
  return steps.find(s => s >= raw) || 86400 * Math.ceil(raw / 86400);
}

// ----------------------------------------------------------------------------- charts
async function drawChart(figure) {
  const data = await getJSON(figure.dataset.seriesUrl);
  const w = Math.max(260, figure.clientWidth - 10), h = 120, pad = 34;
  let t0 = Infinity, t1 = -Infinity, v0 = Infinity, v1 = -Infinity;
  for (const s of data.series) for (const [t, v] of s.points) {
    if (typeof v !== "number") continue;
    t0 = Math.min(t0, t); t1 = Math.max(t1, t); v0 = Math.min(v0, v); v1 = Math.max(v1, v);
  }
  if (!isFinite(t0)) { figure.appendChild(el("p", {class: "muted"}, "no points")); return; }
  if (t1 === t0) t1 = t0 + 1;
  if (v1 === v0) { v1 = v0 + 1; }
  const svg = svgEl("svg", {width: w, height: h + 16, class: "chart-svg", role: "img"});
  const x = t => pad + (t - t0) / (t1 - t0) * (w - pad - 4);
  const y = v => 4 + (1 - (v - v0) / (v1 - v0)) * (h - 8);
  for (const v of [v0, v1]) {
    const label = svgEl("text", {x: 2, y: y(v) + 4, class: "axis-label"});
    label.textContent = Number(v.toPrecision(3)).toString();
    svg.appendChild(label);
  }
  const span = svgEl("text", {x: pad, y: h + 14, class: "axis-label"});
  span.textContent = `${fmtSeconds(t1 - t0)} span`;
  svg.appendChild(span);
  data.series.slice(0, 12).forEach((s, i) => {
    const pts = s.points.filter(p => typeof p[1] === "number").map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`);
    if (pts.length === 1) {
      const [cx, cy] = pts[0].split(",");
      svg.appendChild(svgEl("circle", {cx, cy, r: 3, class: `dot c${i % 6}`}, s.key));
    } else svg.appendChild(svgEl("polyline", {points: pts.join(" "), class: `series c${i % 6}`}, s.key));
  });
  figure.appendChild(svg);
  if (data.series.length > 1) {
    const legend = el("div", {class: "chart-legend"});
    data.series.slice(0, 12).forEach((s, i) => legend.appendChild(el("span", {class: `key c${i % 6}`}, s.key)));
    figure.appendChild(legend);
  }
}

// ----------------------------------------------------------------------------- live run header
async function refreshProgress(base, run) {
  const p = await getJSON(`${base}/api/runs/${encodeURIComponent(run)}/progress`);
  const b = p.mini_batches, i = p.items;
  document.getElementById("run-batches").textContent = `${b.done || 0} done, ${b.failed || 0} failed, ${b.pending || 0} pending, ${b.total} total`;
  document.getElementById("run-items").textContent = `${i.succeeded} succeeded, ${i.failed} failed, ${i.total} total`;
  document.getElementById("run-duration").textContent = fmtSeconds(p.duration) + (p.live ? " so far" : "");
  const badge = document.querySelector("#run-status .status");
  badge.textContent = p.status;
  badge.className = `status st-${p.status.toLowerCase().replace(/ /g, "-")}`;
  const progress = document.getElementById("run-progress");
  progress.max = Math.max(1, b.total);
  progress.value = (b.done || 0) + (b.failed || 0);
  document.getElementById("run-eta").textContent = p.live
    ? `${p.rate ? p.rate.toFixed(1) + " mini-batches/s" : ""}${p.eta !== null ? ", about " + fmtSeconds(p.eta) + " to go" : ""}`
    : "finished";
  return p;
}

// ----------------------------------------------------------------------------- Perfetto hand-off
function openInPerfetto(perfettoUrl, traceUrl, title, status) {
  const origin = new URL(perfettoUrl).origin;
  const win = window.open(perfettoUrl);  // inside the click handler, so popup blockers let it through
  if (!win) { status.textContent = "the browser blocked the Perfetto window; use Download Chrome trace"; return; }
  status.textContent = "loading the trace…";
  fetch(traceUrl).then(r => r.arrayBuffer()).then(buffer => {
    let tries = 0;
    const onMessage = event => {
      if (event.origin !== origin || event.data !== "PONG") return;
      clearInterval(timer);
      window.removeEventListener("message", onMessage);
      win.postMessage({perfetto: {buffer, title, fileName: `${title}.trace.json`}}, origin);
      status.textContent = "sent to Perfetto";
    };
    window.addEventListener("message", onMessage);
    const timer = setInterval(() => {
      tries += 1;
      if (tries > 60) { clearInterval(timer); status.textContent = "Perfetto did not answer (offline?); use Download Chrome trace"; return; }
      win.postMessage("PING", origin);
    }, 250);
  }).catch(error => { status.textContent = `could not read the trace: ${error.message}`; });
}

// ----------------------------------------------------------------------------- logs
class LogView {
  constructor(root) {
    this.api = root.dataset.api;
    this.mbUrl = root.dataset.mbUrl;
    this.rows = document.getElementById("log-rows");
    this.status = document.getElementById("log-status");
    this.follow = document.getElementById("follow");
    const q = new URLSearchParams(location.search);
    this.filters = new URLSearchParams();
    for (const key of ["worker", "mini_batch", "level", "stream", "regex"]) if (q.get(key)) this.filters.set(key, q.get(key));
    this.first = null;   // id of the first row held
    this.last = 0;       // id the forward scan reached
    this.moreBefore = false;
    this.moreAfter = true;
    this.busy = false;
    this.maxRows = 1500;  // rows kept in the DOM; more are dropped from the far end
    this.rows.addEventListener("scroll", () => this.onScroll());
  }

  async page(params) {
    const q = new URLSearchParams(this.filters);
    for (const [k, v] of Object.entries(params)) q.set(k, v);
    return getJSON(`${this.api}?${q}`);
  }

  row(line) {
    const div = el("div", {class: `log-row lv-${String(line.level).toLowerCase()} s-${line.stream}`, "data-id": line.id});
    div.appendChild(el("span", {class: "t"}, fmtTime(line.time)));
    div.appendChild(el("span", {class: "w"}, line.worker || ""));
    const mb = el("span", {class: "mb"});
    if (line.mini_batch_id !== null && line.mini_batch_id !== undefined) {
      mb.appendChild(el("a", {href: this.mbUrl + line.mini_batch_id}, line.mini_batch_id + (line.attempt > 1 ? `.${line.attempt}` : "")));
    } else mb.textContent = line.phase || "";
    div.appendChild(mb);
    div.appendChild(el("span", {class: "lv"}, line.level));
    div.appendChild(el("span", {class: "text"}, line.text));
    return div;
  }

  async start() {
    await this.forward();
    while (this.moreAfter && this.rows.scrollHeight <= this.rows.clientHeight * 2 && this.rows.childElementCount < this.maxRows) {
      if (!(await this.forward())) break;
    }
    this.tick();
  }

  async forward() {
    if (this.busy) return false;
    this.busy = true;
    try {
      const data = await this.page({after: this.last, limit: 300});
      if (data.scanned_to !== null) this.last = data.scanned_to;
      this.moreAfter = data.more;
      this.live = data.live;
      const atBottom = this.rows.scrollTop + this.rows.clientHeight >= this.rows.scrollHeight - 4;
      const frag = document.createDocumentFragment();
      for (const line of data.lines) frag.appendChild(this.row(line));
      this.rows.appendChild(frag);
      if (this.first === null && data.lines.length) this.first = data.lines[0].id;
      this.trimTop();
      if (this.follow.checked && atBottom && data.lines.length) this.rows.scrollTop = this.rows.scrollHeight;
      this.status.textContent = `${this.rows.childElementCount} lines shown${this.moreBefore ? " (earlier lines above)" : ""}${data.live ? " · live" : ""}`;
      return data.lines.length > 0 || data.more;
    } finally { this.busy = false; }
  }

  async backward() {
    if (this.busy || !this.moreBefore || this.first === null) return;
    this.busy = true;
    try {
      const data = await this.page({before: this.first, limit: 300});
      const oldHeight = this.rows.scrollHeight;
      const frag = document.createDocumentFragment();
      for (const line of data.lines) frag.appendChild(this.row(line));
      this.rows.insertBefore(frag, this.rows.firstChild);
      // where the backward scan got to: a sparse filter goes on from there, even without a match yet
      if (data.scanned_to !== null) this.first = data.lines.length ? Math.min(data.lines[0].id, data.scanned_to) : data.scanned_to;
      this.moreBefore = data.more && data.scanned_to !== null;
      this.rows.scrollTop += this.rows.scrollHeight - oldHeight;
      const excess = this.rows.childElementCount - this.maxRows;
      if (excess > 0) {
        removeRange(this.rows.children[this.maxRows], this.rows.lastChild);
        this.moreAfter = true;
        this.last = +this.rows.lastChild.dataset.id;
      }
    } finally { this.busy = false; }
  }

  trimTop() {
    // One removal and one layout read for all excess rows (a read per row would lay out 1,500 rows each time).
    const excess = this.rows.childElementCount - this.maxRows;
    if (excess <= 0) return;
    const before = this.rows.scrollHeight;
    removeRange(this.rows.firstChild, this.rows.children[excess - 1]);
    this.rows.scrollTop -= before - this.rows.scrollHeight;
    this.moreBefore = true;
    this.first = +this.rows.firstChild.dataset.id;
  }

  onScroll() {
    const r = this.rows;
    if (r.scrollTop + r.clientHeight >= r.scrollHeight - 200 && this.moreAfter) this.forward().catch(showError);
    if (r.scrollTop < 200 && this.moreBefore) this.backward().catch(showError);
  }

  tick() {
    setTimeout(async () => {
      try {
        if (this.live !== false || this.moreAfter) {
          const r = this.rows;
          if (this.follow.checked || r.scrollTop + r.clientHeight >= r.scrollHeight - 200) await this.forward();
        }
      } catch (error) { showError(error); }
      if (this.live !== false) this.tick();
    }, 1000);
  }
}

function removeRange(first, last) {
  const range = document.createRange();
  range.setStartBefore(first);
  range.setEndAfter(last);
  range.deleteContents();
}

function showError(error) {
  let box = document.getElementById("ui-error");
  if (!box) { box = el("p", {id: "ui-error", class: "error-message"}); document.querySelector("main").prepend(box); }
  box.textContent = String(error && error.message ? error.message : error);
}

// ----------------------------------------------------------------------------- pages
document.addEventListener("DOMContentLoaded", () => {
  const body = document.body;
  const base = body.dataset.base || "";
  if (body.dataset.page === "run") {
    const timeline = new Timeline(document.getElementById("timeline"), document.getElementById("minimap"),
      document.getElementById("tooltip"));
    timeline.load().then(() => { body.dataset.timelineReady = "true"; }).catch(showError);
    document.querySelectorAll("figure.chart").forEach(figure => drawChart(figure).catch(showError));
    const button = document.getElementById("open-perfetto");
    button.addEventListener("click", () => openInPerfetto(button.dataset.perfetto, document.getElementById("download-trace").href,
      body.dataset.run, document.getElementById("perfetto-status")));
    if (body.dataset.live === "true") {
      const poll = async () => {
        try {
          const p = await refreshProgress(base, body.dataset.run);
          if (timeline.follow || !p.live) await timeline.load();
          if (!p.live) {  // the job ended: the page as a finished run's (first error, tables, charts)
            location.reload();
            return;
          }
        } catch (error) { showError(error); }
        setTimeout(poll, 1000);
      };
      setTimeout(poll, 1000);
    }
  } else if (body.dataset.page === "logs") {
    const view = new LogView(document.getElementById("log-view"));
    view.start().then(() => { body.dataset.logsReady = "true"; }).catch(showError);
  } else if (body.dataset.page === "runs") {
    const form = document.getElementById("compare-form");
    form.addEventListener("submit", event => {
      if (form.querySelectorAll("input[name=run]:checked").length !== 2) {
        event.preventDefault();
        showError("tick exactly two runs to compare");
      }
    });
  }
});
