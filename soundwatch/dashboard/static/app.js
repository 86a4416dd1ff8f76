// soundwatch dashboard: one WebSocket to the server, one card per stream, canvases drawn
// by hand (no libraries, no build step, nothing fetched from the internet).
//
// Messages from /ws: "snapshot" (every stream's recent past, first and after a resync),
// "stream" (one stream's whole view, after a reset), "tags", "status", "event", "mel"
// (one update each) and "stats" (the dashboard's own counters, every second).
"use strict";

const MEL_SECONDS = 10; // spectrogram shown
const LIVE_S = 5; // a stream is live while its last message is younger than this
const STALE_S = 15; // ... and stale once it is older than this
const TOP_ROWS = 5; // labels in "now hearing"
const GROUP_ROWS = 3; // event groups under them
const BAR_ROW = 26; // px per bar
const HEAT_ROW = 20; // px per timeline row
const HEAT_MAX_ROWS = 10;
const LABEL_ROW_MIN = 0.1; // a label gets a timeline row when it reached this in view
const EVENTS_SHOWN = 50;
const BAR_EASE_S = 0.18; // bars ease towards new values with this time constant

const app = {
  streams: new Map(), // name -> Stream
  selected: null, // a stream name, or null for all
  chosen: false, // the user picked (or the address named) what to show
  span: 120, // seconds of timeline shown
  stats: { missed: {} },
  connection: null,
  retries: 0,
};

// -- colours ------------------------------------------------------------------------------

let palette = null;

function colors() {
  if (palette) return palette;
  const css = getComputedStyle(document.documentElement);
  const triple = (name) => css.getPropertyValue(`--${name}-rgb`).trim().split(/\s+/).map(Number);
  palette = {
    text: triple("text"),
    muted: triple("muted"),
    line: triple("line"),
    panel: triple("panel"),
    accent: triple("accent"),
    event: triple("event"),
    font: getComputedStyle(document.body).fontFamily,
  };
  return palette;
}

function rgba(c, a = 1) {
  return `rgba(${c[0]},${c[1]},${c[2]},${a})`;
}

// A magma-like colour map for the spectrogram: dark violet through red to pale yellow.
const MAP_STOPS = [
  [0, 0, 4], [28, 16, 68], [79, 18, 123], [129, 37, 129], [181, 54, 122],
  [229, 80, 100], [251, 135, 97], [254, 194, 135], [252, 253, 191],
];
const COLOR_MAP = (() => {
  const lut = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const x = (i / 255) * (MAP_STOPS.length - 1);
    const k = Math.min(MAP_STOPS.length - 2, Math.floor(x));
    const f = x - k;
    for (let c = 0; c < 3; c++) {
      lut[i * 3 + c] = MAP_STOPS[k][c] + f * (MAP_STOPS[k + 1][c] - MAP_STOPS[k][c]);
    }
  }
  return lut;
})();

// -- small helpers -------------------------------------------------------------------------

function fit(canvas, cssHeight) {
  // Size the canvas to its CSS box at the screen's pixel density; draw in CSS pixels.
  if (cssHeight !== undefined) canvas.style.height = `${cssHeight}px`;
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth;
  const h = canvas.clientHeight;
  const W = Math.max(1, Math.round(w * dpr));
  const H = Math.max(1, Math.round(h * dpr));
  if (canvas.width !== W || canvas.height !== H) {
    canvas.width = W;
    canvas.height = H;
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  return { ctx, w, h };
}

function ellipsize(ctx, text, max) {
  if (ctx.measureText(text).width <= max) return text;
  let lo = 0;
  let hi = text.length;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (ctx.measureText(`${text.slice(0, mid)}…`).width <= max) lo = mid;
    else hi = mid - 1;
  }
  return `${text.slice(0, lo)}…`;
}

function roundRect(ctx, x, y, w, h, r) {
  ctx.beginPath();
  ctx.roundRect(x, y, Math.max(0, w), h, Math.min(r, w / 2, h / 2));
  ctx.fill();
}

function clock(unixSeconds) {
  const d = new Date(unixSeconds * 1000);
  return [d.getHours(), d.getMinutes(), d.getSeconds()]
    .map((n) => String(n).padStart(2, "0"))
    .join(":");
}

function seconds(s) {
  if (s < 60) return `${s.toFixed(1)} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

function ago(s) {
  if (s < 1.5) return "just now";
  if (s < 90) return `${Math.round(s)} s ago`;
  return `${Math.round(s / 60)} min ago`;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function decodeBase64(text) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

// -- one stream ----------------------------------------------------------------------------

class Stream {
  constructor(name) {
    this.name = name;
    this.card = document.getElementById("card-template").content.firstElementChild.cloneNode(true);
    this.card.dataset.stream = name;
    this.card.querySelector(".stream-name").textContent = name;
    this.q = (selector) => this.card.querySelector(selector);
    this.shown = new Map(); // label or group -> the value its bar shows now (eases)
    this.reset();
  }

  reset() {
    this.status = null;
    this.statusAt = null; // performance.now() of the last status
    this.lastMessageAt = null;
    this.top = [];
    this.groups = {};
    this.tEnd = null;
    this.columns = [];
    this.events = []; // oldest first
    this.mel = null;
    this.dirty = { bars: true, heat: true, spectro: true, events: true, health: true };
  }

  load(view) {
    this.reset();
    const now = performance.now();
    if (view.status) {
      this.status = view.status;
      this.statusAt = now - (view.status_age || 0) * 1000;
      this.lastMessageAt = this.statusAt;
    }
    this.top = view.top || [];
    this.groups = view.groups || {};
    this.tEnd = view.t_end;
    this.columns = view.columns || [];
    if (this.columns.length) this.lastMessageAt = this.statusAt ?? now;
    this.events = view.events || [];
    for (const chunk of view.mel || []) this.addMel(chunk);
    this.updateTopList();
  }

  seen() {
    this.lastMessageAt = performance.now();
  }

  onTags(msg) {
    this.seen();
    this.tEnd = msg.t_end;
    this.top = msg.top;
    this.groups = msg.groups;
    this.columns.push(msg.column);
    const horizon = msg.t_end - 300;
    let drop = 0;
    while (drop < this.columns.length && this.columns[drop].t < horizon) drop++;
    if (drop) this.columns.splice(0, drop);
    this.updateTopList();
    this.dirty.bars = this.dirty.heat = this.dirty.events = true;
  }

  onStatus(msg) {
    this.seen();
    this.status = msg.status;
    this.statusAt = performance.now();
    this.dirty.health = this.dirty.heat = this.dirty.bars = true;
  }

  onEvent(event) {
    this.seen();
    const index = this.events.findIndex((e) => e.key === event.key);
    if (index >= 0) this.events[index] = event;
    else this.events.push(event);
    if (this.events.length > 100) this.events.splice(0, this.events.length - 100);
    this.dirty.events = this.dirty.heat = true;
  }

  addMel(chunk) {
    const cap = Math.max(1, Math.round(MEL_SECONDS * chunk.frame_rate));
    let m = this.mel;
    if (!m || m.bins !== chunk.bins || m.frameRate !== chunk.frame_rate) {
      const buffer = document.createElement("canvas");
      buffer.width = cap;
      buffer.height = chunk.bins;
      const bctx = buffer.getContext("2d");
      bctx.fillStyle = "#000004";
      bctx.fillRect(0, 0, cap, chunk.bins);
      m = this.mel = {
        buffer, bctx, cap, bins: chunk.bins, frameRate: chunk.frame_rate,
        lo: chunk.lo, hi: chunk.hi, frames: 0,
      };
      const hint = this.q(".spectro-hint");
      hint.textContent = `log-mel · ${chunk.bins} bands`;
      hint.title = `${chunk.bins} mel bands, ${Math.round(chunk.frame_rate)} frames per second`;
      this.q(".spectro-span").textContent = `−${MEL_SECONDS} s`;
    }
    // One colour scale for the whole picture: the widest range the messages used.
    m.lo = Math.min(m.lo, chunk.lo);
    m.hi = Math.max(m.hi, chunk.hi);
    const bytes = decodeBase64(chunk.frames);
    const n = Math.min(chunk.n, cap);
    const skip = chunk.n - n;
    const bins = m.bins;
    const image = m.bctx.createImageData(n, bins);
    const scale = (chunk.hi - chunk.lo) / 255;
    const range = m.hi - m.lo || 1;
    for (let i = 0; i < n; i++) {
      const row = (skip + i) * bins;
      for (let b = 0; b < bins; b++) {
        const value = chunk.lo + bytes[row + b] * scale;
        const level = Math.max(0, Math.min(255, Math.round(((value - m.lo) / range) * 255)));
        const p = ((bins - 1 - b) * n + i) * 4; // low bands at the bottom
        image.data[p] = COLOR_MAP[level * 3];
        image.data[p + 1] = COLOR_MAP[level * 3 + 1];
        image.data[p + 2] = COLOR_MAP[level * 3 + 2];
        image.data[p + 3] = 255;
      }
    }
    m.bctx.drawImage(m.buffer, -n, 0); // scroll left by n frames
    m.bctx.putImageData(image, cap - n, 0);
    m.frames += chunk.n;
    this.dirty.spectro = true;
  }

  onMel(chunk) {
    this.seen();
    this.addMel(chunk);
  }

  updateTopList() {
    const list = this.q(".top-list");
    list.replaceChildren(
      ...this.top.slice(0, TOP_ROWS).map(([label, p]) => {
        const item = el("li", "", `${label} ${p.toFixed(2)}`);
        item.dataset.label = label;
        return item;
      }),
    );
    const canvas = this.q(".bars");
    canvas.setAttribute(
      "aria-label",
      this.top.length
        ? `Top labels: ${this.top.slice(0, TOP_ROWS).map(([l, p]) => `${l} ${p.toFixed(2)}`).join(", ")}`
        : "No labels yet",
    );
  }

  thresholds() {
    return (this.status && this.status.groups) || {};
  }

  // The event groups worth a bar: closest to (or over) their threshold first.
  groupBars() {
    const thresholds = this.thresholds();
    const open = new Set(this.events.filter((e) => e.state === "start").map((e) => e.label));
    return Object.entries(this.groups)
      .map(([name, score]) => {
        const threshold = thresholds[name] ?? null;
        const ratio = threshold ? score / threshold : score;
        return { name, score, threshold, ratio, open: open.has(name) };
      })
      .filter((g) => g.open || g.score >= 0.01)
      .sort((a, b) => Number(b.open) - Number(a.open) || b.ratio - a.ratio)
      .slice(0, GROUP_ROWS);
  }

  // -- drawing ----------------------------------------------------------------------------

  drawBars(dt) {
    const c = colors();
    const canvas = this.q(".bars");
    const top = this.top.slice(0, TOP_ROWS);
    const groups = this.groupBars();
    const height = Math.max(TOP_ROWS * BAR_ROW, 60) + (groups.length ? 24 + groups.length * BAR_ROW : 0);
    const { ctx, w } = fit(canvas, height);
    ctx.font = `14px ${c.font}`;
    ctx.textBaseline = "middle";

    // Ease every shown value towards its target (new labels grow from zero).
    const targets = new Map(top.map(([label, p]) => [`l:${label}`, p]));
    for (const g of groups) targets.set(`g:${g.name}`, g.score);
    const k = 1 - Math.exp(-dt / BAR_EASE_S);
    let moving = false;
    for (const [key, target] of targets) {
      const now = this.shown.get(key) ?? 0;
      const next = now + (target - now) * k;
      if (Math.abs(target - next) > 0.002) moving = true;
      this.shown.set(key, Math.abs(target - next) > 0.002 ? next : target);
    }
    for (const key of [...this.shown.keys()]) if (!targets.has(key)) this.shown.delete(key);

    const labelW = Math.min(220, Math.max(96, w * 0.42));
    ctx.font = `14px ${c.font}`;
    const valueW = ctx.measureText(groups.length ? "0.00 / 0.00" : "0.00").width + 12;
    const trackX = labelW + 8;
    const trackW = Math.max(20, w - trackX - valueW);
    if (!top.length) {
      ctx.fillStyle = rgba(c.muted);
      ctx.fillText("Waiting for tags…", 0, BAR_ROW / 2);
    }
    top.forEach(([label, p], i) => {
      const y = i * BAR_ROW;
      const v = this.shown.get(`l:${label}`) ?? p;
      ctx.fillStyle = rgba(c.text);
      ctx.font = `${i === 0 ? "600 " : ""}14px ${c.font}`;
      ctx.fillText(ellipsize(ctx, label, labelW - 4), 0, y + BAR_ROW / 2);
      ctx.fillStyle = rgba(c.line, 0.55);
      roundRect(ctx, trackX, y + 7, trackW, BAR_ROW - 14, 4);
      ctx.fillStyle = rgba(c.accent, i === 0 ? 1 : 0.75);
      roundRect(ctx, trackX, y + 7, trackW * Math.min(1, v), BAR_ROW - 14, 4);
      ctx.fillStyle = rgba(c.text);
      ctx.textAlign = "right";
      ctx.font = `14px ${c.font}`;
      ctx.fillText(p.toFixed(2), w, y + BAR_ROW / 2);
      ctx.textAlign = "left";
    });
    if (groups.length) {
      let y = Math.max(TOP_ROWS * BAR_ROW, 60) + 6;
      ctx.fillStyle = rgba(c.muted);
      ctx.font = `600 11px ${c.font}`;
      ctx.fillText("EVENT GROUPS · SCORE / THRESHOLD", 0, y + 7);
      y += 18;
      for (const g of groups) {
        const v = this.shown.get(`g:${g.name}`) ?? g.score;
        const over = g.threshold !== null && g.score >= g.threshold;
        ctx.font = `${g.open ? "600 " : ""}14px ${c.font}`;
        ctx.fillStyle = rgba(g.open ? c.event : c.text);
        ctx.fillText(ellipsize(ctx, g.name, labelW - 4), 0, y + BAR_ROW / 2);
        ctx.fillStyle = rgba(c.line, 0.55);
        roundRect(ctx, trackX, y + 7, trackW, BAR_ROW - 14, 4);
        ctx.fillStyle = over ? rgba(c.event) : rgba(c.accent, 0.45);
        roundRect(ctx, trackX, y + 7, trackW * Math.min(1, v), BAR_ROW - 14, 4);
        if (g.threshold !== null) {
          const tx = trackX + trackW * Math.min(1, g.threshold);
          ctx.fillStyle = rgba(c.text, 0.9);
          ctx.fillRect(tx - 1, y + 3, 2, BAR_ROW - 6);
        }
        ctx.font = `14px ${c.font}`;
        ctx.textAlign = "right";
        ctx.fillStyle = rgba(over ? c.event : c.text);
        const shownThreshold = g.threshold === null ? "" : ` / ${g.threshold.toFixed(2)}`;
        ctx.fillText(`${g.score.toFixed(2)}${shownThreshold}`, w, y + BAR_ROW / 2);
        ctx.textAlign = "left";
        y += BAR_ROW;
      }
    }
    return moving;
  }

  hop() {
    if (this.status && this.status.hop) return this.status.hop;
    const n = this.columns.length;
    return n > 1 ? Math.max(0.05, this.columns[n - 1].t - this.columns[n - 2].t) : 0.5;
  }

  // Which rows the timeline shows: groups near or over their threshold (or with events),
  // then the labels that stood out, best first.
  heatRows(t0, t1) {
    const columns = this.columns.filter((col) => col.t >= t0);
    const thresholds = this.thresholds();
    const withEvents = new Set(
      this.events.filter((e) => (e.offset ?? t1) >= t0).map((e) => e.label),
    );
    const groupPeak = new Map(Object.keys(thresholds).map((name) => [name, 0]));
    const labelPeak = new Map();
    for (const col of columns) {
      for (const [name, v] of Object.entries(col.g)) groupPeak.set(name, Math.max(groupPeak.get(name) ?? 0, v));
      for (const [name, v] of Object.entries(col.l)) labelPeak.set(name, Math.max(labelPeak.get(name) ?? 0, v));
    }
    const groups = [...groupPeak]
      .map(([name, peak]) => ({ kind: "group", name, peak, threshold: thresholds[name] ?? null }))
      .filter((g) => withEvents.has(g.name) || g.peak >= 0.5 * (g.threshold ?? 0.2))
      .sort((a, b) => Number(withEvents.has(b.name)) - Number(withEvents.has(a.name))
        || b.peak / (b.threshold ?? 1) - a.peak / (a.threshold ?? 1))
      .slice(0, 5);
    let labels = [...labelPeak]
      .map(([name, peak]) => ({ kind: "label", name, peak }))
      .sort((a, b) => b.peak - a.peak);
    const standouts = labels.filter((l) => l.peak >= LABEL_ROW_MIN);
    labels = (standouts.length ? standouts : labels.slice(0, 3))
      .slice(0, Math.max(3, HEAT_MAX_ROWS - groups.length));
    return { columns, rows: [...groups, ...labels] };
  }

  drawHeat() {
    const c = colors();
    const canvas = this.q(".heatmap");
    const span = app.span;
    const t1 = this.tEnd ?? 0;
    const t0 = t1 - span;
    const { columns, rows } = this.tEnd === null ? { columns: [], rows: [] } : this.heatRows(t0, t1);
    const axisH = 20;
    const height = Math.max(rows.length, 3) * HEAT_ROW + axisH + 2;
    const { ctx, w } = fit(canvas, height);
    const gutter = Math.min(210, Math.max(120, w * 0.24));
    const plotW = Math.max(10, w - gutter);
    const plotH = Math.max(rows.length, 3) * HEAT_ROW;
    const x = (t) => gutter + ((t - t0) / span) * plotW;
    ctx.textBaseline = "middle";
    ctx.fillStyle = rgba(c.line, 0.22);
    ctx.fillRect(gutter, 0, plotW, plotH);

    // Time grid and axis: ticks back from now.
    const step = span <= 60 ? 10 : span <= 120 ? 20 : 60;
    ctx.font = `11px ${c.font}`;
    ctx.textAlign = "center";
    for (let back = 0; back <= span; back += step) {
      const tx = x(t1 - back);
      ctx.fillStyle = rgba(c.line, 0.9);
      ctx.fillRect(tx - 0.5, 0, 1, plotH);
      ctx.fillStyle = rgba(c.muted);
      const text = back === 0 ? "now" : back % 60 === 0 ? `−${back / 60} min` : `−${back} s`;
      ctx.textAlign = back === 0 ? "right" : back === span ? "left" : "center";
      ctx.fillText(text, back === span ? tx + 2 : tx, plotH + axisH / 2 + 2);
    }
    ctx.textAlign = "left";

    if (!rows.length) {
      ctx.fillStyle = rgba(c.muted);
      ctx.font = `13px ${c.font}`;
      const text = this.tEnd === null ? "Waiting for tags…" : "Quiet: nothing stood out in this span";
      ctx.fillText(text, gutter + 10, plotH / 2);
      return;
    }

    const hop = this.hop();
    for (const col of columns) {
      const x0 = Math.max(gutter, x(col.t - hop));
      const cw = Math.max(1, x(col.t) - x0 + 0.6);
      rows.forEach((row, i) => {
        const v = (row.kind === "group" ? col.g[row.name] : col.l[row.name]) || 0;
        if (v <= 0.005) return;
        if (row.kind === "group" && row.threshold !== null) {
          ctx.fillStyle = v >= row.threshold
            ? rgba(c.event, 0.3 + 0.3 * Math.min(1, v))
            : rgba(c.accent, 0.08 + 0.62 * Math.pow(v / row.threshold, 0.8));
        } else {
          ctx.fillStyle = rgba(c.accent, Math.min(1, 0.06 + Math.pow(v, 0.6)));
        }
        ctx.fillRect(x0, i * HEAT_ROW + 1, cw, HEAT_ROW - 2);
      });
    }

    // Events under their group's row: a bar from onset to offset (or now).
    rows.forEach((row, i) => {
      if (row.kind !== "group") return;
      for (const e of this.events) {
        if (e.label !== row.name) continue;
        const end = e.offset ?? (e.state === "start" ? t1 : e.onset);
        if (end < t0) continue;
        const x0 = Math.max(gutter, x(e.onset));
        const y = i * HEAT_ROW + HEAT_ROW - 7;
        ctx.fillStyle = rgba(c.panel);
        roundRect(ctx, x0 - 1, y - 1, Math.max(3, x(end) - x0) + 2, 7, 3);
        ctx.fillStyle = rgba(c.event);
        roundRect(ctx, x0, y, Math.max(3, x(end) - x0), 5, 2.5);
      }
    });

    // Row names; groups first with their threshold, a rule between groups and labels.
    rows.forEach((row, i) => {
      const y = i * HEAT_ROW + HEAT_ROW / 2;
      if (row.kind === "group") {
        const threshold = row.threshold === null ? "" : `≥ ${row.threshold.toFixed(2)}`;
        ctx.font = `12px ${c.font}`;
        ctx.fillStyle = rgba(c.muted);
        ctx.textAlign = "right";
        ctx.fillText(threshold, gutter - 10, y);
        ctx.textAlign = "left";
        const room = gutter - 20 - ctx.measureText(threshold).width;
        ctx.font = `600 13px ${c.font}`;
        ctx.fillStyle = rgba(c.text);
        ctx.fillText(ellipsize(ctx, row.name, room), 0, y);
      } else {
        ctx.font = `13px ${c.font}`;
        ctx.fillStyle = rgba(c.text, 0.92);
        ctx.fillText(ellipsize(ctx, row.name, gutter - 10), 0, y);
      }
      const next = rows[i + 1];
      if (next && next.kind !== row.kind) {
        ctx.fillStyle = rgba(c.muted, 0.6);
        ctx.fillRect(0, (i + 1) * HEAT_ROW - 0.5, w, 1);
      }
    });
  }

  drawSpectrogram() {
    const canvas = this.q(".spectrogram");
    this.q(".spectro-empty").hidden = Boolean(this.mel);
    const { ctx, w, h } = fit(canvas);
    if (!this.mel) return;
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(this.mel.buffer, 0, 0, this.mel.cap, this.mel.bins, 0, 0, w, h);
  }

  renderEvents() {
    const list = this.q(".event-list");
    const shown = this.events.slice(-EVENTS_SHOWN).reverse(); // newest first
    this.q(".events-empty").hidden = shown.length > 0;
    const open = this.events.filter((e) => e.state === "start").length;
    this.q(".event-count").textContent = this.events.length
      ? `${this.events.length} kept${open ? ` · ${open} active` : ""}`
      : "";
    list.replaceChildren(
      ...shown.map((e) => {
        const item = el("li");
        item.dataset.state = e.state;
        item.dataset.label = e.label;
        const time = el("time", "", clock(e.onset));
        time.dateTime = new Date(e.onset * 1000).toISOString();
        let duration;
        if (e.state === "start") duration = `active · ${seconds(Math.max(0, (this.tEnd ?? e.onset) - e.onset))}`;
        else if (e.state === "interrupted") duration = "interrupted";
        else duration = seconds(Math.max(0, (e.offset ?? e.onset) - e.onset));
        item.append(
          time,
          el("span", "ev-label", e.label),
          el("span", "ev-dur", duration),
          el("span", "ev-peak", `peak ${e.peak.toFixed(2)}`),
        );
        return item;
      }),
    );
  }

  renderHealth() {
    const set = (key, text, warn = false, title = text) => {
      const node = this.q(`[data-health="${key}"]`);
      node.textContent = text;
      node.title = title;
      node.classList.toggle("warn", warn);
    };
    const s = this.status;
    const missed = app.stats.missed?.[this.name] ?? 0;
    set("missed", String(missed), missed > 0);
    const age = this.statusAt === null ? null : (performance.now() - this.statusAt) / 1000;
    set("age", age === null ? "none yet" : ago(age), age !== null && age > STALE_S && !s?.ended);
    if (!s) return;
    const counters = s.counters || {};
    const source = s.source || {};
    set("model", s.model || "–");
    const where = source.device ?? source.path;
    const shortWhere = typeof where === "string" ? where.split("/").pop() : where;
    set(
      "source",
      [source.kind, shortWhere].filter((v) => v !== undefined && v !== null && v !== "").join(" · ") || "–",
      false,
      [source.kind, where].filter(Boolean).join(" · "),
    );
    const lat = s.latency || {};
    set("latency", "p50" in lat ? `${Math.round(lat.p50 * 1000)} / ${Math.round(lat.p99 * 1000)} ms` : "no windows yet");
    set("overflows", String(counters.overflows ?? 0), (counters.overflows ?? 0) > 0);
    set("dropped", String(counters.windows_dropped ?? 0), (counters.windows_dropped ?? 0) > 0);
    set("tagged", String(counters.windows_tagged ?? "–"));
    const shownKeys = new Set(["overflows", "windows_dropped", "windows_tagged", "samples_in"]);
    const other = Object.entries(counters)
      .filter(([name, v]) => v && !shownKeys.has(name))
      .map(([name, v]) => `${name.replaceAll("_", " ")} ${v}`);
    this.q(".health-other").textContent = other.join(" · ");
    const meta = [
      s.window && s.hop ? `window ${s.window} s · hop ${s.hop} s` : "",
      s.events_window ? "events on" : "",
    ].filter(Boolean);
    this.q(".meta").textContent = meta.join(" · ");
  }

  renderBadge() {
    const badge = this.q(".badge");
    const age = this.lastMessageAt === null ? null : (performance.now() - this.lastMessageAt) / 1000;
    let state = "waiting";
    if (this.status && this.status.ended) state = "ended";
    else if (age !== null && age > STALE_S) state = "stale";
    else if (age !== null && age <= LIVE_S && this.tEnd !== null) state = "live";
    else if (this.tEnd !== null) state = "quiet";
    badge.dataset.state = state;
    badge.textContent = state;
  }

  draw(dt) {
    let again = false;
    if (this.card.hidden) return false;
    if (this.dirty.bars) again = this.drawBars(dt);
    this.dirty.bars = again;
    if (this.dirty.heat) this.drawHeat();
    if (this.dirty.spectro) this.drawSpectrogram();
    if (this.dirty.events) this.renderEvents();
    if (this.dirty.health) this.renderHealth();
    this.dirty.heat = this.dirty.spectro = this.dirty.events = this.dirty.health = false;
    return again;
  }

  markAll() {
    for (const key of Object.keys(this.dirty)) this.dirty[key] = true;
  }
}

// -- the page ------------------------------------------------------------------------------

function stream(name) {
  let s = app.streams.get(name);
  if (!s) {
    s = new Stream(name);
    app.streams.set(name, s);
    layout();
  }
  return s;
}

function layout() {
  const container = document.getElementById("streams");
  const names = [...app.streams.keys()].sort();
  if (!app.chosen && names.length > 4) app.selected = names[0]; // many: one at a time
  // A stream picked but not (yet) there: show them all meanwhile.
  const active = app.selected !== null && app.streams.has(app.selected) ? app.selected : null;
  container.replaceChildren(...names.map((name) => app.streams.get(name).card));
  for (const name of names) {
    app.streams.get(name).card.hidden = active !== null && active !== name;
  }
  const visible = names.filter((n) => !app.streams.get(n).card.hidden).length;
  container.classList.toggle("single", visible === 1);
  document.getElementById("empty").hidden = names.length > 0;

  const picker = document.getElementById("picker");
  picker.hidden = names.length < 2;
  const choice = (label, value) => {
    const button = el("button", "", label);
    button.type = "button";
    button.setAttribute("aria-pressed", String(active === value));
    button.addEventListener("click", () => {
      app.selected = value;
      app.chosen = true;
      history.replaceState(null, "", `#stream=${encodeURIComponent(value ?? "")}`);
      layout();
    });
    return button;
  };
  picker.replaceChildren(choice("All", null), ...names.map((n) => choice(n, n)));
  for (const s of app.streams.values()) s.markAll();
  schedule();
}

function handle(msg) {
  switch (msg.type) {
    case "snapshot": {
      const names = new Set(msg.streams.map((v) => v.stream));
      for (const name of [...app.streams.keys()]) if (!names.has(name)) app.streams.delete(name);
      for (const view of msg.streams) stream(view.stream).load(view);
      if (msg.server) {
        document.getElementById("endpoints").textContent = msg.server.endpoints.join(", ");
        updateStats(msg.server);
      }
      layout();
      break;
    }
    case "stream":
      stream(msg.stream).load(msg.view);
      break;
    case "tags":
      stream(msg.stream).onTags(msg);
      break;
    case "status":
      stream(msg.stream).onStatus(msg);
      break;
    case "event":
      stream(msg.stream).onEvent(msg.event);
      break;
    case "mel":
      stream(msg.stream).onMel(msg.chunk);
      break;
    case "stats":
      updateStats(msg);
      break;
    default:
      break;
  }
  schedule();
}

function updateStats(stats) {
  app.stats = stats;
  const missed = Object.values(stats.missed || {}).reduce((a, b) => a + b, 0);
  const values = { ...stats, missed };
  for (const node of document.querySelectorAll("[data-stat]")) {
    const v = values[node.dataset.stat] ?? 0;
    node.textContent = String(v);
    node.classList.toggle("warn", node.dataset.stat !== "received" && node.dataset.stat !== "clients" && v > 0);
  }
  for (const s of app.streams.values()) s.dirty.health = true;
}

let frameRequested = false;
let lastFrame = performance.now();

function schedule() {
  if (!frameRequested) {
    frameRequested = true;
    requestAnimationFrame(frame);
  }
}

function frame(now) {
  frameRequested = false;
  const dt = Math.min(0.5, Math.max(0, (now - lastFrame) / 1000));
  lastFrame = now;
  let again = false;
  for (const s of app.streams.values()) again = s.draw(dt) || again;
  if (again) schedule();
}

function tick() {
  // Once a second: ages, active event durations, live/stale badges.
  for (const s of app.streams.values()) {
    s.renderBadge();
    s.dirty.health = true;
    if (s.events.some((e) => e.state === "start")) s.dirty.events = true;
  }
  schedule();
}

function setConnection(state, text) {
  const node = document.getElementById("connection");
  node.dataset.state = state;
  node.querySelector(".text").textContent = text;
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/ws`);
  app.connection = socket;
  socket.addEventListener("open", () => {
    app.retries = 0;
    setConnection("open", "connected");
  });
  socket.addEventListener("message", (e) => handle(JSON.parse(e.data)));
  socket.addEventListener("close", () => {
    const wait = Math.min(5000, 500 * 2 ** app.retries++);
    setConnection("closed", "reconnecting…");
    setTimeout(connect, wait);
  });
}

function effectiveTheme() {
  const chosen = document.documentElement.dataset.theme;
  if (chosen) return chosen;
  return matchMedia("(prefers-color-scheme: light)").matches ? "light" : "dark";
}

function themeChanged() {
  palette = null;
  for (const s of app.streams.values()) s.markAll();
  schedule();
}

function init() {
  const hash = new URLSearchParams(location.hash.slice(1));
  app.selected = hash.get("stream") || null; // "#stream=" (empty): all streams
  app.chosen = hash.has("stream");
  const span = document.getElementById("span");
  app.span = Number(span.value);
  span.addEventListener("change", () => {
    app.span = Number(span.value);
    for (const s of app.streams.values()) s.dirty.heat = true;
    schedule();
  });
  document.getElementById("theme").addEventListener("click", () => {
    const next = effectiveTheme() === "dark" ? "light" : "dark";
    document.documentElement.dataset.theme = next;
    try {
      localStorage.setItem("soundwatch-theme", next);
    } catch (e) { /* storage blocked: the choice lasts this page */ }
    themeChanged();
  });
  matchMedia("(prefers-color-scheme: light)").addEventListener("change", themeChanged);
  new ResizeObserver(() => {
    for (const s of app.streams.values()) s.markAll();
    schedule();
  }).observe(document.getElementById("streams"));
  setInterval(tick, 1000);
  layout();
  connect();
}

init();
