// The black box timeline page. Reads the recording from #tl-data (the
// format is documented in collector/timeline/src/encode.rs), draws lanes on
// a canvas, keeps a virtualized list of the events in view, and never puts
// recorded text into the page as HTML (textContent and fillText only).
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("tl-data").textContent);
  const S = D.s, EV = D.ev, N = D.n, LANES = D.lanes, T0 = D.t0;
  // Fields after kind, lane, t per kind.
  const LEN = [9, 7, 4, 3, 6, 10, 2, 3, 1];
  const KIND = ["exec", "exit", "fatal signal", "OOM kill", "record", "reading", "gap", "truncated", "marker"];
  const SIG = { 1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 5: "SIGTRAP", 6: "SIGABRT", 7: "SIGBUS", 8: "SIGFPE", 9: "SIGKILL", 11: "SIGSEGV", 13: "SIGPIPE", 15: "SIGTERM", 24: "SIGXCPU", 25: "SIGXFSZ", 31: "SIGSYS" };
  const $ = (id) => document.getElementById(id);

  // ---- decode: per event kind, lane, time, offset of its fields ----
  const kind = new Uint8Array(N), lane = new Int32Array(N), tt = new Float64Array(N), off = new Uint32Array(N);
  let sorted = true;
  for (let i = 0, p = 0; i < N; i++) {
    const k = EV[p];
    kind[i] = k; lane[i] = EV[p + 1]; tt[i] = EV[p + 2]; off[i] = p + 3;
    p += 3 + (LEN[k] || 0);
    if (i > 0 && tt[i] < tt[i - 1]) sorted = false;
  }
  // ord: positions in time order -> event index; ts: their times.
  let ord = new Uint32Array(N);
  for (let i = 0; i < N; i++) ord[i] = i;
  if (!sorted) ord.sort((a, b) => tt[a] - tt[b] || a - b);
  const ts = new Float64Array(N);
  for (let j = 0; j < N; j++) ts[j] = tt[ord[j]];
  const f = (i, n) => EV[off[i] + n];
  const str = (i, n) => { const s = EV[off[i] + n]; return s >= 0 ? S[s] : null; };

  function markerClass(i) {
    const k = kind[i];
    if (k === 2) return "crash";
    if (k === 3) return "oom";
    if (k !== 4) return null;
    const c = (str(i, 3) || "").toLowerCase();
    if (/crash|signal|segv|abort|panic|oops|bug|fault/.test(c)) return "crash";
    if (/warn|kernel/.test(c) || f(i, 4) >= 2) return "warning";
    return "record";
  }

  // Per lane: positions (time order) of its events, and of its operator commands.
  const NL = LANES.length;
  const laneCount = new Uint32Array(NL);
  let nGlobal = 0;
  for (let i = 0; i < N; i++) { if (lane[i] >= 0 && lane[i] < NL) laneCount[lane[i]]++; else nGlobal++; }
  const laneEv = [], laneFill = new Uint32Array(NL);
  for (let l = 0; l < NL; l++) laneEv.push(new Uint32Array(laneCount[l]));
  const globalPos = [], markerPos = [], readPos = [], opPos = [];
  for (let l = 0; l < NL; l++) opPos.push([]);
  let lost = 0, gaps = 0;
  const truncs = [];
  for (let j = 0; j < N; j++) {
    const i = ord[j], l = lane[i], k = kind[i];
    if (l >= 0 && l < NL) {
      laneEv[l][laneFill[l]++] = j;
      if (k === 0 && f(i, 8) === 1) opPos[l].push(j);
    } else globalPos.push(j);
    if (k >= 2 && k <= 4) markerPos.push(j);
    else if (k === 5) readPos.push(j);
    else if (k === 6) { lost += f(i, 0); gaps++; }
    else if (k === 7) truncs.push(i);
  }
  let maxLoad = 1;
  for (const j of readPos) maxLoad = Math.max(maxLoad, f(ord[j], 0) / 100);

  // ---- time helpers ----
  function iso(t) {
    const ms = T0 / 1000 + t / 1000;
    if (!isFinite(ms)) return "?";
    const d = new Date(Math.floor(ms));
    const frac = String(Math.floor((t % 1000 + 1000) % 1000)).padStart(3, "0");
    return d.toISOString().replace("T", " ").replace("Z", "") + frac;
  }
  function dur(us) {
    const s = us / 1e6;
    if (s < 1) return (us / 1000).toFixed(1) + " ms";
    if (s < 120) return s.toFixed(2) + " s";
    if (s < 7200) return (s / 60).toFixed(1) + " min";
    return (s / 3600).toFixed(1) + " h";
  }
  // Binary search over positions `arr` (or all when null) by time.
  function lower(arr, t, a, b) {
    a = a || 0; b = b === undefined ? (arr ? arr.length : N) : b;
    while (a < b) { const m = (a + b) >>> 1; if (ts[arr ? arr[m] : m] < t) a = m + 1; else b = m; }
    return a;
  }

  // ---- full extent and the view ----
  let full0 = N ? ts[0] : 0, full1 = N ? ts[N - 1] : 1e6;
  for (const i of truncs) full0 = Math.min(full0, f(i, 2));
  if (D.meta.start !== null) full0 = Math.min(full0, D.meta.start - T0);
  if (D.meta.stop !== null) full1 = Math.max(full1, D.meta.stop - T0);
  if (full1 - full0 < 1e6) full1 = full0 + 1e6;
  const pad = (full1 - full0) * 0.02;
  full0 -= pad; full1 += pad;
  let v0 = full0, v1 = full1;

  // ---- the filter ----
  let query = "", strHit = null, lowered = null, matchPos = null, laneMatchPos = null, laneShown = [];
  let matchEv = null; // per event: 1 when it matches the filter
  const STRF = { 0: [3, 4, 5, 6, 7], 1: [2], 2: [2], 3: [1], 4: [1, 2, 3, 5], 5: [9], 6: [1], 8: [0] };
  function evMatches(i, q, qnum, laneHit) {
    if (lane[i] >= 0 && laneHit[lane[i]]) return true;
    const k = kind[i];
    if (KIND[k].indexOf(q) >= 0) return true;
    const fs = STRF[k];
    if (fs) for (const n of fs) { const s = EV[off[i] + n]; if (s >= 0 && strHit[s]) return true; }
    if (qnum !== null && (k <= 4) && f(i, 0) === qnum) return true;
    return false;
  }
  function applyFilter(q) {
    query = q.trim().toLowerCase();
    if (!query) { matchPos = null; laneMatchPos = null; matchEv = null; }
    else {
      if (!lowered) lowered = S.map((s) => s.toLowerCase());
      strHit = new Uint8Array(S.length);
      for (let s = 0; s < S.length; s++) if (lowered[s].indexOf(query) >= 0) strHit[s] = 1;
      const laneHit = LANES.map((L) => L.label.toLowerCase().indexOf(query) >= 0 || (L.tty || "").toLowerCase() === query);
      const qnum = /^\d+$/.test(query) ? Number(query) : null;
      const m = [];
      matchEv = new Uint8Array(N);
      for (let j = 0; j < N; j++) if (evMatches(ord[j], query, qnum, laneHit)) { m.push(j); matchEv[ord[j]] = 1; }
      matchPos = Uint32Array.from(m);
      laneMatchPos = [];
      for (let l = 0; l < NL; l++) laneMatchPos.push([]);
      for (const j of m) { const l = lane[ord[j]]; if (l >= 0 && l < NL) laneMatchPos[l].push(j); }
    }
    laneShown = [];
    for (let l = 0; l < NL; l++) if ((laneMatchPos ? laneMatchPos[l].length : laneEv[l].length) > 0) laneShown.push(l);
    const total = laneEv.filter((a) => a.length > 0).length;
    const lc = $("lane-count");
    lc.textContent = query ? `${laneShown.length} of ${total} lanes match` : `${total} lanes`;
    lc.dataset.shown = String(laneShown.length);
    lc.dataset.total = String(total);
    listScroll.scrollTop = 0;
    layout();
    redraw();
  }

  // ---- layout and drawing ----
  const LABEL_W = 230, AXIS_H = 22, STRIP_H = 44, ROW_H = 22;
  const Y0 = AXIS_H + STRIP_H + 6;
  const wrap = $("chart-wrap"), spacer = $("chart-spacer"), stage = $("stage"), canvas = $("tl-canvas");
  const markersEl = $("markers"), ctx = canvas.getContext("2d");
  let W = 800, H = 400, dpr = 1;
  function layout() {
    W = wrap.clientWidth; H = wrap.clientHeight; dpr = window.devicePixelRatio || 1;
    stage.style.height = H + "px";
    spacer.style.height = Math.max(H, Y0 + laneShown.length * ROW_H + 12) + "px";
    // Resizing clears the canvas: only when the size changed.
    const cw = Math.max(1, Math.floor(W * dpr)), ch = Math.max(1, Math.floor(H * dpr));
    if (canvas.width !== cw || canvas.height !== ch) {
      canvas.width = cw; canvas.height = ch;
      canvas.style.width = W + "px"; canvas.style.height = H + "px";
      return true;
    }
    return false;
  }
  const plotW = () => Math.max(10, W - LABEL_W - 10);
  const xOf = (t) => LABEL_W + (t - v0) / (v1 - v0) * plotW();
  const tAt = (x) => v0 + (x - LABEL_W) / plotW() * (v1 - v0);

  function hatch(x0, x1, color, label) {
    const a = Math.max(LABEL_W, x0), b = Math.min(W, Math.max(x1, x0 + 4));
    if (b <= LABEL_W || a >= W) return;
    ctx.save();
    ctx.beginPath(); ctx.rect(a, AXIS_H, b - a, H - AXIS_H); ctx.clip();
    ctx.fillStyle = color + "22"; ctx.fillRect(a, AXIS_H, b - a, H - AXIS_H);
    ctx.strokeStyle = color + "88"; ctx.lineWidth = 1;
    for (let x = a - H; x < b; x += 7) { ctx.beginPath(); ctx.moveTo(x, H); ctx.lineTo(x + H, AXIS_H); ctx.stroke(); }
    ctx.restore();
    if (label) { ctx.fillStyle = color; ctx.font = "11px sans-serif"; ctx.fillText(label, a + 3, AXIS_H + 11, Math.max(40, b - a + 160)); }
  }

  function drawAxis() {
    ctx.fillStyle = "#eef1f4"; ctx.fillRect(0, 0, W, AXIS_H);
    const span = v1 - v0, pw = plotW();
    const steps = [1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6, 2e6, 5e6, 1e7, 3e7, 6e7, 12e7, 3e8, 6e8, 18e8, 36e8, 72e8, 216e8, 432e8, 864e8];
    let step = steps[steps.length - 1];
    for (const s of steps) if (s / span * pw >= 110) { step = s; break; }
    ctx.fillStyle = "#39424d"; ctx.strokeStyle = "#dfe3e8"; ctx.font = "11px sans-serif";
    const abs0 = T0 + v0;
    let t = Math.ceil(abs0 / step) * step - T0;
    for (; t <= v1; t += step) {
      const x = xOf(t);
      ctx.beginPath(); ctx.moveTo(x, AXIS_H - 4); ctx.lineTo(x, H); ctx.stroke();
      const s = iso(t);
      ctx.fillText(step >= 1e6 ? s.slice(11, 19) : s.slice(11, 23), x + 3, 14);
    }
    ctx.fillStyle = "#5b6672";
    ctx.fillText(iso(v0).slice(0, 10) + " UTC", 6, 14);
  }

  function drawStrip() {
    const y = AXIS_H + 2, h = STRIP_H - 4;
    ctx.fillStyle = "#f4f6f8"; ctx.fillRect(0, y, W, h);
    ctx.fillStyle = "#39424d"; ctx.font = "11px sans-serif";
    ctx.fillText(`load (max ${maxLoad.toFixed(1)})`, 6, y + 14);
    ctx.fillStyle = "#2e7d32"; ctx.fillText("memory used", 6, y + 30);
    if (!readPos.length) { ctx.fillStyle = "#8a939d"; ctx.fillText("no instrument readings", LABEL_W + 6, y + 24); return; }
    const a = Math.max(0, lower(readPos, v0) - 1), b = Math.min(readPos.length, lower(readPos, v1) + 1);
    const every = Math.max(1, Math.floor((b - a) / plotW()));
    ctx.save(); ctx.beginPath(); ctx.rect(LABEL_W, y, plotW(), h); ctx.clip();
    ctx.fillStyle = "rgba(46,125,50,0.22)"; ctx.beginPath(); ctx.moveTo(xOf(ts[readPos[a]]), y + h);
    for (let r = a; r < b; r += every) {
      const i = ord[readPos[r]], tot = f(i, 3), av = f(i, 4);
      const used = tot > 0 ? 1 - av / tot : 0;
      ctx.lineTo(xOf(ts[readPos[r]]), y + h - used * h);
    }
    ctx.lineTo(xOf(ts[readPos[b - 1]]), y + h); ctx.closePath(); ctx.fill();
    ctx.strokeStyle = "#1565c0"; ctx.lineWidth = 1.5; ctx.beginPath();
    for (let r = a; r < b; r += every) {
      const i = ord[readPos[r]], x = xOf(ts[readPos[r]]), yy = y + h - Math.min(1, f(i, 0) / 100 / maxLoad) * h;
      if (r === a) ctx.moveTo(x, yy); else ctx.lineTo(x, yy);
    }
    ctx.stroke(); ctx.restore();
  }

  function drawLane(l, y) {
    const arr = laneMatchPos ? laneMatchPos[l] : laneEv[l];
    const L = LANES[l], mid = y + ROW_H / 2;
    ctx.fillStyle = L.op > 0 ? "#b35c00" : "#1d232b";
    ctx.font = (L.op > 0 ? "600 " : "") + "12px sans-serif";
    const label = (L.op > 0 ? "\u2328 " + (L.tty ? L.tty + " " : "") : L.kind === "unit" ? "\u2699 " : "") + L.label;
    ctx.fillText(label, 6, mid + 4, LABEL_W - 12);
    ctx.save(); ctx.beginPath(); ctx.rect(LABEL_W, y, plotW() + 2, ROW_H); ctx.clip();
    const a = lower(arr, v0 - (v1 - v0) * 0.01), b = lower(arr, v1 + (v1 - v0) * 0.01);
    const pw = plotW();
    if (b - a > pw * 2) {
      // Dense: one bar per pixel column, its height the log of the count.
      ctx.fillStyle = "#4a7fc1";
      let j = a;
      for (let px = 0; px < pw; px++) {
        const e = lower(arr, tAt(LABEL_W + px + 1), j, b);
        const c = e - j;
        if (c > 0) { const hh = Math.min(ROW_H - 4, 3 + Math.log2(c + 1) * 2); ctx.fillRect(LABEL_W + px, mid - hh / 2, 1, hh); }
        j = e;
      }
    } else {
      let lastX = -1e9, lastK = -1;
      for (let r = a; r < b; r++) {
        const pos = arr[r], i = ord[pos], k = kind[i], x = xOf(ts[pos]);
        if ((x | 0) === lastX && k === lastK) continue;
        lastX = x | 0; lastK = k;
        if (k === 0) { ctx.fillStyle = f(i, 8) ? "#ff8c00" : "#4a7fc1"; const hh = f(i, 8) ? ROW_H - 4 : ROW_H - 10; ctx.fillRect(x - 1, mid - hh / 2, 2, hh); }
        else if (k === 1) {
          const sig = f(i, 4), st = f(i, 3);
          const x0 = xOf(ts[pos] - f(i, 6) * 1000);
          ctx.fillStyle = sig >= 0 ? "#d21f1f" : st > 0 ? "#c2185b" : "#9bb7d4";
          ctx.fillRect(Math.min(x0, x - 1), mid - 2, Math.max(2, x - x0), 4);
          if (sig >= 0) ctx.fillRect(x - 1, mid - 6, 2, 12);
        } else { ctx.fillStyle = "#5b6672"; ctx.fillRect(x - 1, mid - 5, 2, 10); }
      }
    }
    // Operator commands always show, whatever the density.
    const ops = opPos[l];
    if (ops.length) {
      const oa = lower(ops, v0), ob = lower(ops, v1);
      ctx.fillStyle = "#ff8c00";
      for (let r = oa; r < ob; r++) {
        if (matchEv && !matchEv[ord[ops[r]]]) continue;
        ctx.fillRect(xOf(ts[ops[r]]) - 1, y + 2, 3, ROW_H - 4);
      }
    }
    ctx.restore();
  }

  function drawGlobal() {
    let lastLabel = -1e9;
    for (const j of globalPos) {
      const i = ord[j], k = kind[i];
      if (k === 6) {
        const x = xOf(ts[j]);
        if (x > LABEL_W - 4 && x < W + 4) {
          // Labels only where they do not overlap the previous one.
          const room = x - lastLabel > 90;
          if (room) lastLabel = x;
          hatch(x - 3, x + 3, "#d21f1f", room ? `gap: ${f(i, 0)} lost` : null);
        }
      } else if (k === 7) {
        hatch(xOf(full0), xOf(f(i, 2)), "#6d4c41", `truncated: ${f(i, 1)} older entries deleted`);
      } else if (k === 8) {
        const x = xOf(ts[j]);
        if (x >= LABEL_W && x <= W) {
          ctx.save(); ctx.strokeStyle = "#7b1fa2"; ctx.setLineDash([4, 3]); ctx.beginPath(); ctx.moveTo(x, AXIS_H); ctx.lineTo(x, H); ctx.stroke(); ctx.restore();
          ctx.fillStyle = "#7b1fa2"; ctx.font = "11px sans-serif"; ctx.fillText(str(i, 0) || "", x + 3, Y0 - 4, 220);
        }
      }
    }
  }

  let selected = -1;
  function drawMarkers(k0, k1, scroll) {
    const frag = document.createDocumentFragment();
    const laneRow = new Int32Array(NL).fill(-1);
    for (let k = k0; k < k1; k++) laneRow[laneShown[k]] = k;
    const a = lower(markerPos, v0), b = lower(markerPos, v1);
    // One marker per lane per 6 px, at most 1,500 in the DOM.
    let made = 0;
    const taken = new Set();
    for (let r = a; r < b && made < 1500; r++) {
      const pos = markerPos[r], i = ord[pos], l = lane[i];
      if (l < 0 || l >= NL || laneRow[l] < 0) continue;
      if (matchEv && !matchEv[i]) continue;
      const x = xOf(ts[pos]), y = Y0 + laneRow[l] * ROW_H - scroll + ROW_H / 2;
      if (y < Y0 || x < LABEL_W) continue;
      const key = `${Math.floor(x / 6)}:${l}`;
      if (taken.has(key)) continue;
      taken.add(key);
      const cls = markerClass(i);
      const m = document.createElement("button");
      m.type = "button";
      m.className = "marker " + cls + (i === selected ? " selected" : "");
      m.style.left = x + "px"; m.style.top = y + "px";
      m.dataset.ev = String(i);
      m.title = `${iso(ts[pos])} ${describe(i)}`;
      m.setAttribute("aria-label", `${cls}: ${describe(i)}`);
      frag.appendChild(m); made++;
    }
    markersEl.replaceChildren(frag);
  }

  function draw() {
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, W, H);
    const scroll = wrap.scrollTop;
    const k0 = Math.max(0, Math.floor(scroll / ROW_H)), k1 = Math.min(laneShown.length, Math.ceil((scroll + H - Y0) / ROW_H) + 1);
    ctx.save(); ctx.beginPath(); ctx.rect(0, Y0, W, H - Y0); ctx.clip();
    for (let k = k0; k < k1; k++) {
      const y = Y0 + k * ROW_H - scroll;
      if (k % 2) { ctx.fillStyle = "#f7f9fb"; ctx.fillRect(0, y, W, ROW_H); }
      drawLane(laneShown[k], y);
    }
    ctx.restore();
    if (!laneShown.length) { ctx.fillStyle = "#8a939d"; ctx.font = "13px sans-serif"; ctx.fillText(query ? "no lane matches the filter" : "no process events", LABEL_W + 8, Y0 + 18); }
    ctx.fillStyle = "#cfd5dc"; ctx.fillRect(LABEL_W - 1, AXIS_H, 1, H - AXIS_H);
    drawAxis();
    drawStrip();
    drawGlobal();
    drawMarkers(k0, k1, scroll);
    $("view-range").textContent = `view: ${iso(v0).slice(11, 23)} to ${iso(v1).slice(11, 23)} (${dur(v1 - v0)})`;
  }

  // ---- the event list (virtualized: only rows in view are in the DOM) ----
  const listScroll = $("list-scroll"), listSpacer = $("list-spacer"), listRows = $("list-rows");
  const LROW = 20, MAXPX = 8e6;
  let la = 0, lb = 0;
  function listRange() {
    la = lower(matchPos, v0); lb = lower(matchPos, v1 + 1e-9);
    const n = lb - la;
    listSpacer.style.height = Math.min(n * LROW, MAXPX) + "px";
    $("list-count").textContent = `(${n.toLocaleString("en")} events in view${query ? " matching the filter" : ""})`;
  }
  function laneName(l) { return l >= 0 && l < NL ? LANES[l].label : "host (whole timeline)"; }
  function renderList() {
    const n = lb - la, vis = Math.ceil(listScroll.clientHeight / LROW) + 2;
    const totalPx = Math.min(n * LROW, MAXPX), maxScroll = Math.max(1, totalPx - listScroll.clientHeight);
    const first = n * LROW <= MAXPX ? Math.floor(listScroll.scrollTop / LROW) : Math.floor(listScroll.scrollTop / maxScroll * Math.max(0, n - vis + 2));
    listRows.style.top = (n * LROW <= MAXPX ? first * LROW : listScroll.scrollTop) + "px";
    const frag = document.createDocumentFragment();
    for (let r = first; r < Math.min(n, first + vis); r++) {
      const pos = matchPos ? matchPos[la + r] : la + r, i = ord[pos], k = kind[i];
      const row = document.createElement("div");
      const cls = markerClass(i);
      row.className = "row" + (k === 0 && f(i, 8) ? " op" : "") + (cls === "crash" || cls === "oom" ? " crash" : cls === "warning" ? " warning" : "") + (k === 6 || k === 7 ? " gap" : "") + (i === selected ? " selected" : "");
      row.setAttribute("role", "listitem");
      row.dataset.ev = String(i);
      for (const [c, text] of [["c-time", iso(ts[pos])], ["c-lane", laneName(lane[i])], ["c-kind", k === 0 && f(i, 8) ? "operator" : KIND[k]], ["c-desc", describe(i)]]) {
        const s = document.createElement("span"); s.className = c; s.textContent = text; row.appendChild(s);
      }
      frag.appendChild(row);
    }
    listRows.replaceChildren(frag);
  }

  // ---- what an event says ----
  function sig(n) { return SIG[n] ? `${n} (${SIG[n]})` : String(n); }
  function describe(i) {
    switch (kind[i]) {
      case 0: return (f(i, 8) ? `[${str(i, 3) || "tty"}] ` : "") + (str(i, 5) || str(i, 4) || "") + `  [${f(i, 0)}]`;
      case 1: return `${str(i, 2)} [${f(i, 0)}] ` + (f(i, 4) >= 0 ? `killed by signal ${sig(f(i, 4))}` : `exited ${f(i, 3)}`) + (f(i, 5) ? ", core dumped" : "") + ` after ${dur(f(i, 6) * 1000)}`;
      case 2: return `${str(i, 2)} [${f(i, 0)}] fatal signal ${sig(f(i, 3))}`;
      case 3: return `${str(i, 1)} [${f(i, 0)}] killed by the OOM killer (anon RSS ${(f(i, 2) / 1024).toFixed(0)} MiB)`;
      case 4: { const p = str(i, 5) || ""; const nl = p.indexOf("\n"); return `${str(i, 3)} (severity ${f(i, 4)}): ${nl >= 0 ? p.slice(0, nl) : p.slice(0, 200)}`; }
      case 5: { const tot = f(i, 3), used = tot ? (100 * (1 - f(i, 4) / tot)).toFixed(0) : "?"; const dt = f(i, 8); return `load ${(f(i, 0) / 100).toFixed(2)} ${(f(i, 1) / 100).toFixed(2)} ${(f(i, 2) / 100).toFixed(2)}, memory ${used}% used, disk ${dt ? (100 * f(i, 7) / dt).toFixed(0) : "?"}% used; top: ${str(i, 9) || "-"}`; }
      case 6: return `${f(i, 0)} events lost: ${str(i, 1)}`;
      case 7: return `${f(i, 1)} older entries in ${f(i, 0)} segments deleted (until ${iso(f(i, 2))})`;
      case 8: return str(i, 0) || "";
    }
    return "";
  }
  function fields(i) {
    const k = kind[i], out = [["time (UTC)", iso(tt[i])], ["lane", laneName(lane[i])]];
    const add = (name, v) => { if (v !== null && v !== undefined && v !== -1) out.push([name, String(v)]); };
    if (k === 0) { add("pid", f(i, 0)); add("ppid", f(i, 1)); add("uid", f(i, 2)); add("tty", str(i, 3)); add("executable", str(i, 4)); add("argv", str(i, 5)); add("cgroup", str(i, 6)); add("unit", str(i, 7)); add("operator command", f(i, 8) ? "yes" : "no"); }
    else if (k === 1) { add("pid", f(i, 0)); add("ppid", f(i, 1)); add("comm", str(i, 2)); add("status", f(i, 3)); if (f(i, 4) >= 0) add("signal", sig(f(i, 4))); add("core dumped", f(i, 5) ? "yes" : "no"); add("run time", dur(f(i, 6) * 1000)); }
    else if (k === 2) { add("pid", f(i, 0)); add("tid", f(i, 1)); add("comm", str(i, 2)); add("signal", sig(f(i, 3))); }
    else if (k === 3) { add("pid", f(i, 0)); add("comm", str(i, 1)); add("anon RSS (KiB)", f(i, 2)); }
    else if (k === 4) { add("pid", f(i, 0)); add("record id", str(i, 1)); add("event id", str(i, 2)); add("classification", str(i, 3)); add("severity", f(i, 4)); }
    else add("what", describe(i));
    return out;
  }
  // A fatal signal, a process killed by a signal or an OOM kill opens the
  // backtrace of the record its process gave (same pid, from 1 s before to
  // 60 s after: pids are reused), when the recording holds one.
  let recByPid = null;
  function recordOf(i) {
    const k = kind[i];
    if (!(k === 2 || k === 3 || (k === 1 && f(i, 4) >= 0))) return -1;
    if (!recByPid) {
      recByPid = new Map();
      for (let j = 0; j < N; j++) {
        if (kind[j] !== 4 || f(j, 0) < 0) continue;
        const l = recByPid.get(f(j, 0));
        if (l) l.push(j); else recByPid.set(f(j, 0), [j]);
      }
    }
    let best = -1;
    for (const j of recByPid.get(f(i, 0)) || []) {
      const d = tt[j] - tt[i];
      if (d >= -1e6 && d <= 60e6 && (best < 0 || Math.abs(d) < Math.abs(tt[best] - tt[i]))) best = j;
    }
    return best;
  }
  function showDetail(i) {
    selected = i;
    const d = $("detail");
    d.hidden = false;
    $("detail-title").textContent = (kind[i] === 0 && f(i, 8) ? "operator command" : KIND[kind[i]]) + " at " + iso(tt[i]);
    const dl = $("detail-fields");
    const frag = document.createDocumentFragment();
    for (const [name, v] of fields(i)) {
      const dt = document.createElement("dt"); dt.textContent = name;
      const dd = document.createElement("dd"); dd.textContent = v;
      frag.appendChild(dt); frag.appendChild(dd);
    }
    dl.replaceChildren(frag);
    // The backtrace (a record's payload) or the top processes.
    const rec = recordOf(i);
    $("detail-payload").textContent = kind[i] === 4 ? (str(i, 5) || "") : kind[i] === 5 ? (str(i, 9) || "").split(", ").join("\n")
      : rec >= 0 ? `${str(rec, 3)} (record ${str(rec, 1)}):\n${str(rec, 5) || ""}` : "";
    layout();
    redraw();
  }

  // ---- interaction ----
  let pending = false, listDirty = true;
  function redraw() {
    listDirty = true;
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; draw(); if (listDirty) { listRange(); renderList(); listDirty = false; } });
  }
  function setView(a, b) {
    const span = Math.min(Math.max(b - a, 1000), (full1 - full0) * 4);
    const mid = (a + b) / 2;
    a = mid - span / 2; b = mid + span / 2;
    if (a < full0 - span / 2) { b += full0 - span / 2 - a; a = full0 - span / 2; }
    if (b > full1 + span / 2) { a -= b - (full1 + span / 2); b = full1 + span / 2; }
    v0 = a; v1 = b;
    redraw();
  }
  function zoom(factor, anchor) {
    if (anchor === undefined) anchor = (v0 + v1) / 2;
    setView(anchor - (anchor - v0) * factor, anchor + (v1 - anchor) * factor);
  }
  $("zoom-in").addEventListener("click", () => zoom(0.5));
  $("zoom-out").addEventListener("click", () => zoom(2));
  $("zoom-reset").addEventListener("click", () => setView(full0, full1));
  stage.addEventListener("wheel", (e) => {
    e.preventDefault();
    const r = canvas.getBoundingClientRect(), x = e.clientX - r.left;
    const dy = e.deltaMode === 1 ? e.deltaY * 16 : e.deltaMode === 2 ? e.deltaY * 400 : e.deltaY;
    zoom(Math.exp(Math.max(-600, Math.min(600, dy)) * 0.002), x > LABEL_W ? tAt(x) : undefined);
  }, { passive: false });
  let drag = null;
  canvas.addEventListener("mousedown", (e) => { drag = { x: e.clientX, y: e.clientY, v0, v1, s: wrap.scrollTop, moved: false }; canvas.classList.add("dragging"); });
  window.addEventListener("mousemove", (e) => {
    if (!drag) return;
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
    if (!drag.moved) return;
    const dt = -dx / plotW() * (drag.v1 - drag.v0);
    v0 = drag.v0 + dt; v1 = drag.v1 + dt;
    wrap.scrollTop = drag.s - dy;
    redraw();
  });
  window.addEventListener("mouseup", (e) => {
    if (!drag) return;
    const d = drag; drag = null; canvas.classList.remove("dragging");
    if (!d.moved) hit(e);
  });
  function hit(e) {
    const r = canvas.getBoundingClientRect(), x = e.clientX - r.left, y = e.clientY - r.top;
    if (x < LABEL_W) return;
    const t = tAt(x), tol = 6 / plotW() * (v1 - v0);
    let arr = null;
    if (y >= AXIS_H && y < AXIS_H + STRIP_H) arr = readPos;
    else if (y >= Y0) {
      const k = Math.floor((y - Y0 + wrap.scrollTop) / ROW_H);
      if (k >= 0 && k < laneShown.length) arr = laneMatchPos ? laneMatchPos[laneShown[k]] : laneEv[laneShown[k]];
    }
    let best = -1, bd = Infinity;
    const cands = [];
    if (arr && arr.length) { const j = lower(arr, t); if (j < arr.length) cands.push(arr[j]); if (j > 0) cands.push(arr[j - 1]); }
    for (const j of globalPos) if (kind[ord[j]] !== 5) cands.push(j);
    for (const pos of cands) { const d = Math.abs(ts[pos] - t); if (d < bd) { bd = d; best = pos; } }
    if (best >= 0 && bd <= tol * (arr === readPos ? 4 : 1)) showDetail(ord[best]);
  }
  markersEl.addEventListener("click", (e) => {
    const m = e.target.closest(".marker");
    if (m) showDetail(Number(m.dataset.ev));
  });
  listRows.addEventListener("click", (e) => {
    const row = e.target.closest(".row");
    if (row) showDetail(Number(row.dataset.ev));
  });
  listScroll.addEventListener("scroll", () => renderList());
  wrap.addEventListener("scroll", () => redraw());
  $("detail-close").addEventListener("click", () => { $("detail").hidden = true; selected = -1; layout(); redraw(); });
  let filterTimer = 0;
  $("filter").addEventListener("input", (e) => {
    clearTimeout(filterTimer);
    const v = e.target.value;
    filterTimer = setTimeout(() => applyFilter(v), 120);
  });
  document.addEventListener("keydown", (e) => {
    if (e.target instanceof HTMLInputElement) { if (e.key === "Escape") e.target.blur(); return; }
    if (e.key === "+" || e.key === "=") zoom(0.5);
    else if (e.key === "-") zoom(2);
    else if (e.key === "0") setView(full0, full1);
    else if (e.key === "/") { e.preventDefault(); $("filter").focus(); }
    else if (e.key === "Escape") $("detail-close").click();
  });
  // Observers run after this frame's animation callbacks: draw now.
  new ResizeObserver(() => { if (layout()) draw(); redraw(); }).observe(wrap);

  // ---- header and notices ----
  const M = D.meta;
  $("title").textContent = M.title;
  $("meta").textContent = [`recording ${M.id}`, M.label ? `"${M.label}"` : null, M.start !== null ? `from ${iso(M.start - T0)}` : null, M.stop !== null ? `to ${iso(M.stop - T0)}` : "still recording", `${N.toLocaleString("en")} events`, "times in UTC"].filter(Boolean).join(" \u00b7 ");
  const notes = [];
  for (const i of truncs) notes.push(`Truncated: ${f(i, 1).toLocaleString("en")} older entries in ${f(i, 0)} segments were deleted to keep the recording under its --max-size (until ${iso(f(i, 2))}); shown hatched brown.`);
  if (gaps) notes.push(`${lost.toLocaleString("en")} events were lost in ${gaps} gap${gaps > 1 ? "s" : ""} (the kernel side or eventprobe had to drop them under overload); shown hatched red.`);
  const nb = $("notices");
  for (const t of notes) { const p = document.createElement("p"); p.textContent = t; nb.appendChild(p); }

  applyFilter("");
  layout();
  draw(); listRange(); renderList(); listDirty = false;
  window.timelineReady = performance.now();
  document.documentElement.dataset.ready = "1";
})();
