// picmap explorer: a canvas scatter map with hover thumbnails, a class legend, lasso selection,
// search and a "Show" filter for named lists of points (outliers, label errors, ...). Points are
// stamped straight into an ImageData buffer, which keeps panning smooth with 100,000 points.
// All user text is shown with textContent, never parsed as HTML.
"use strict";
(() => {
  const data = JSON.parse(document.getElementById("picmap-data").textContent);
  const $ = (id) => document.getElementById(id);
  const xs = floats(data.x);
  const ys = floats(data.y);
  const n = xs.length;
  // Class index per point (all 0 without labels).
  const codes = data.codes ? Int32Array.from(data.codes) : new Int32Array(xs.length);
  const classNames = data.classNames; // null without labels
  const names = data.names; // file name per point, or null
  const thumbs = data.thumbs; // sprite atlases, or null without images
  const lists = data.lists || []; // [{name, indices}], shown by the "Show" control
  const colors = data.colors.map((hex) => rgba(hex));
  const paleColors = data.colors.map((hex) => rgba(hex, 0.75));
  const OUTLINE = rgba("#111111");
  const WHITE = 0xffffffff;

  const hidden = new Uint8Array(colors.length);
  const selected = new Uint8Array(n);
  const matched = new Uint8Array(n);
  const flagged = new Uint8Array(n); // in the list chosen under "Show"
  const memberships = new Map(); // point -> names of the lists it is in, for the tooltip
  for (const list of lists) {
    for (const i of list.indices) memberships.set(i, [...(memberships.get(i) || []), list.name]);
  }
  const order = shuffled(n);
  const atlases = [];
  const view = { scale: 1, tx: 0, ty: 0, fitScale: 0 }; // screen = (x*scale+tx, ty-y*scale)
  let searching = false;
  let filtering = false;
  let selectedCount = 0;
  let hover = -1;
  let drag = null; // {pan: {x, y, tx, ty}} or {lasso: [[x, y], ...]}
  let lassoMode = false;
  let frame = null; // last rendered points, redrawn under overlays
  let pending = 0; // 0: nothing, 1: overlay only, 2: points and overlay

  const canvas = $("map");
  const ctx = canvas.getContext("2d");
  const tip = $("tip");
  const thumbCanvas = $("thumb");

  const visible = (i) => hidden[codes[i]] === 0;
  // Highlighted: passes the search and the "Show" filter, whichever are active.
  const highlighted = (i) =>
    (searching || filtering) &&
    (!searching || matched[i] === 1) &&
    (!filtering || flagged[i] === 1);
  const nameOf = (i) => (names ? names[i] : `#${i}`);
  const labelOf = (i) => (classNames ? classNames[codes[i]] : "");

  function floats(base64) {
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    return new Float32Array(bytes.buffer);
  }

  // "#rrggbb" -> little-endian RGBA pixel, optionally mixed with white by `fade`.
  function rgba(hex, fade = 0) {
    const channel = (k) => {
      const v = parseInt(hex.slice(1 + 2 * k, 3 + 2 * k), 16);
      return Math.round(v + (255 - v) * fade);
    };
    return ((255 << 24) | (channel(2) << 16) | (channel(1) << 8) | channel(0)) >>> 0;
  }

  // A fixed pseudo-random drawing order, so no class always covers another.
  function shuffled(count) {
    const out = Uint32Array.from({ length: count }, (_, i) => i);
    let seed = 12345;
    for (let i = count - 1; i > 0; i--) {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      const j = seed % (i + 1);
      [out[i], out[j]] = [out[j], out[i]];
    }
    return out;
  }

  // ---- view ---------------------------------------------------------------------------------

  const toScreenX = (x) => x * view.scale + view.tx;
  const toScreenY = (y) => view.ty - y * view.scale;

  function fit() {
    let [x0, x1, y0, y1] = [Infinity, -Infinity, Infinity, -Infinity];
    for (let i = 0; i < n; i++) {
      x0 = Math.min(x0, xs[i]);
      x1 = Math.max(x1, xs[i]);
      y0 = Math.min(y0, ys[i]);
      y1 = Math.max(y1, ys[i]);
    }
    const w = canvas.clientWidth;
    const h = canvas.clientHeight;
    view.scale = 0.92 * Math.min(w / (x1 - x0 || 1), h / (y1 - y0 || 1));
    view.fitScale = view.scale;
    view.tx = w / 2 - ((x0 + x1) / 2) * view.scale;
    view.ty = h / 2 + ((y0 + y1) / 2) * view.scale;
  }

  // Marker radius in CSS pixels: smaller for big collections, growing gently when zoomed in.
  function radius() {
    const base = Math.min(4, Math.max(0.5, 3 * Math.sqrt(1000 / n)));
    return Math.min(8, base * Math.sqrt(view.scale / view.fitScale));
  }

  // ---- drawing ------------------------------------------------------------------------------

  function request(level) {
    if (!pending) requestAnimationFrame(draw);
    pending = Math.max(pending, level);
  }

  function draw() {
    if (pending === 2 || !frame) renderPoints();
    pending = 0;
    ctx.putImageData(frame, 0, 0);
    drawOverlay();
    window.picmap.ready = true;
  }

  // A disc of radius r device pixels as horizontal runs: dy, halfWidth, dy, halfWidth, ...
  // Using r*r + r (about (r + 0.5)^2) keeps small discs round instead of square or dashed.
  function disc(r) {
    const reach = r * r + r;
    const runs = [];
    for (let dy = -Math.floor(Math.sqrt(reach)); dy * dy <= reach; dy++) {
      runs.push(dy, Math.floor(Math.sqrt(reach - dy * dy)));
    }
    return Int32Array.from(runs);
  }

  function stamp(buf, w, h, px, py, runs, color) {
    for (let k = 0; k < runs.length; k += 2) {
      const y = py + runs[k];
      if (y < 0 || y >= h) continue;
      const start = y * w;
      const end = start + Math.min(w - 1, px + runs[k + 1]);
      for (let p = start + Math.max(0, px - runs[k + 1]); p <= end; p++) buf[p] = color;
    }
  }

  function renderPoints() {
    const { width: w, height: h } = canvas;
    const dpr = w / canvas.clientWidth || 1;
    const image = ctx.createImageData(w, h);
    const buf = new Uint32Array(image.data.buffer);
    buf.fill(WHITE);
    const r = Math.max(0.5, radius() * dpr);
    const hotR = Math.max(r + dpr, 2.5 * dpr); // matched and selected points stand out
    const [normal, hot, ring] = [disc(r), disc(hotR), disc(hotR + dpr)];
    const emphasis = searching || filtering || selectedCount > 0;
    const [s, tx, ty] = [view.scale * dpr, view.tx * dpr, view.ty * dpr];
    // Pass 0 draws everything (pale when something is emphasised); pass 1 the emphasised on top.
    for (let pass = 0; pass < (emphasis ? 2 : 1); pass++) {
      for (let k = 0; k < n; k++) {
        const i = order[k];
        if (!visible(i)) continue;
        const isHot = emphasis && (highlighted(i) || selected[i] === 1);
        if (emphasis && isHot !== (pass === 1)) continue;
        const px = Math.round(xs[i] * s + tx);
        const py = Math.round(ty - ys[i] * s);
        if (px < -20 || py < -20 || px > w + 20 || py > h + 20) continue;
        const c = codes[i];
        if (!isHot) {
          stamp(buf, w, h, px, py, normal, emphasis ? paleColors[c] : colors[c]);
          continue;
        }
        if (selected[i]) stamp(buf, w, h, px, py, ring, OUTLINE);
        stamp(buf, w, h, px, py, hot, colors[c]);
      }
    }
    frame = image;
  }

  function drawOverlay() {
    const dpr = canvas.width / canvas.clientWidth || 1;
    ctx.save();
    ctx.scale(dpr, dpr);
    ctx.lineWidth = 1.5;
    ctx.strokeStyle = "#111";
    if (hover >= 0) {
      ctx.beginPath();
      ctx.arc(toScreenX(xs[hover]), toScreenY(ys[hover]), radius() + 4, 0, 2 * Math.PI);
      ctx.stroke();
    }
    if (drag && drag.lasso) {
      ctx.setLineDash([4, 3]);
      ctx.beginPath();
      for (const [x, y] of drag.lasso) ctx.lineTo(x, y);
      ctx.closePath();
      ctx.stroke();
    }
    ctx.restore();
  }

  function resize() {
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.max(1, Math.round(canvas.clientWidth * dpr));
    canvas.height = Math.max(1, Math.round(canvas.clientHeight * dpr));
    if (!view.fitScale) fit();
    request(2);
  }

  // ---- hover --------------------------------------------------------------------------------

  function nearest(cx, cy) {
    let best = -1;
    let bestD = Math.max(6, radius() + 3) ** 2;
    for (let i = 0; i < n; i++) {
      if (!visible(i)) continue;
      const dx = toScreenX(xs[i]) - cx;
      const dy = toScreenY(ys[i]) - cy;
      const d = dx * dx + dy * dy;
      if (d < bestD) [best, bestD] = [i, d];
    }
    return best;
  }

  function setHover(i, clientX, clientY) {
    if (i !== hover) request(1);
    hover = i;
    tip.hidden = i < 0;
    if (i < 0) return;
    $("tip-label").textContent = labelOf(i);
    $("tip-name").textContent = nameOf(i);
    $("tip-lists").textContent = (memberships.get(i) || []).join(" · ");
    drawThumb(i);
    const box = tip.getBoundingClientRect();
    const left = clientX + 16 + box.width > innerWidth ? clientX - 16 - box.width : clientX + 16;
    const top = Math.min(clientY + 16, innerHeight - box.height - 4);
    tip.style.left = `${Math.max(4, left)}px`;
    tip.style.top = `${Math.max(4, top)}px`;
  }

  function atlas(a) {
    if (!atlases[a]) {
      atlases[a] = new Image();
      atlases[a].src = thumbs.urls[a];
    }
    return atlases[a];
  }

  function drawThumb(i) {
    thumbCanvas.hidden = !thumbs;
    if (!thumbs) return;
    const { w, h, perRow, perAtlas } = thumbs;
    const zoom = Math.max(1, Math.floor(128 / Math.max(w, h)));
    thumbCanvas.width = w * zoom;
    thumbCanvas.height = h * zoom;
    const image = atlas(Math.floor(i / perAtlas));
    if (!image.complete) {
      image.addEventListener("load", () => hover === i && drawThumb(i), { once: true });
      return;
    }
    const k = i % perAtlas;
    const tctx = thumbCanvas.getContext("2d");
    tctx.imageSmoothingEnabled = false;
    const [sx, sy] = [(k % perRow) * w, Math.floor(k / perRow) * h];
    tctx.drawImage(image, sx, sy, w, h, 0, 0, w * zoom, h * zoom);
  }

  // ---- selection ----------------------------------------------------------------------------

  function inside(polygon, x, y) {
    let odd = false;
    for (let a = 0, b = polygon.length - 1; a < polygon.length; b = a++) {
      const [xa, ya] = polygon[a];
      const [xb, yb] = polygon[b];
      if (ya > y !== yb > y && x < ((xb - xa) * (y - ya)) / (yb - ya) + xa) odd = !odd;
    }
    return odd;
  }

  function selectInside(polygon) {
    selected.fill(0);
    for (let i = 0; i < n; i++) {
      if (visible(i) && inside(polygon, toScreenX(xs[i]), toScreenY(ys[i]))) selected[i] = 1;
    }
    updateCounts();
  }

  function selectedNames() {
    const out = [];
    for (let i = 0; i < n; i++) if (selected[i] && visible(i)) out.push(nameOf(i));
    return out;
  }

  function updateCounts() {
    selectedCount = selectedNames().length;
    let matches = 0;
    for (let i = 0; i < n; i++) matches += matched[i] && visible(i) ? 1 : 0;
    $("match-count").textContent = searching ? `${matches} matches` : "";
    say(selectedCount ? `${selectedCount} selected` : "");
    request(2);
  }

  function say(text) {
    $("status").textContent = text;
  }

  function withSelection(action) {
    const list = selectedNames();
    if (list.length) action(list);
    else say("Nothing selected: Shift+drag (or Lasso) around points first");
  }

  function copySelection(list) {
    const text = list.join("\n");
    const written = navigator.clipboard ? navigator.clipboard.writeText(text) : Promise.reject();
    written.then(
      () => say(`Copied ${list.length} file names`),
      () => say("The browser blocked the clipboard; use Export instead"),
    );
  }

  function exportSelection(list) {
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([`${list.join("\n")}\n`], { type: "text/plain" }));
    link.download = "picmap-selection.txt";
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
    say(`Exported ${list.length} file names`);
  }

  // ---- search and legend --------------------------------------------------------------------

  let lowerNames = null;
  function search(query) {
    const q = query.trim().toLowerCase();
    searching = q.length > 0;
    matched.fill(0);
    if (searching) {
      lowerNames ||= Array.from({ length: n }, (_, i) => nameOf(i).toLowerCase());
      const classHit = (classNames || [""]).map((name) => name.toLowerCase().includes(q));
      for (let i = 0; i < n; i++) matched[i] = classHit[codes[i]] || lowerNames[i].includes(q);
    }
    updateCounts();
  }

  function showList(k) {
    filtering = k >= 0;
    flagged.fill(0);
    if (filtering) for (const i of lists[k].indices) flagged[i] = 1;
    updateCounts();
  }

  function buildShow() {
    if (!lists.length) return;
    lists.forEach((list, k) => {
      const option = document.createElement("option");
      option.value = String(k);
      option.textContent = `${list.name} (${list.indices.length})`;
      $("show").append(option);
    });
    $("show").addEventListener("change", (event) => showList(Number(event.target.value || -1)));
    $("show-box").hidden = false;
  }

  function buildLegend() {
    if (!classNames) return;
    const counts = new Array(classNames.length).fill(0);
    for (let i = 0; i < n; i++) counts[codes[i]]++;
    buildClassLegend($("legend"), classNames, data.colors, counts, (c, off) => {
      hidden[c] = off ? 1 : 0;
      setHover(-1);
      updateCounts();
    });
  }

  // ---- input --------------------------------------------------------------------------------

  function local(event) {
    const box = canvas.getBoundingClientRect();
    return [event.clientX - box.left, event.clientY - box.top];
  }

  canvas.addEventListener("pointerdown", (event) => {
    const [x, y] = local(event);
    canvas.setPointerCapture(event.pointerId);
    setHover(-1);
    const pan = { x, y, tx: view.tx, ty: view.ty };
    drag = event.shiftKey || lassoMode ? { lasso: [[x, y]] } : { pan };
  });

  canvas.addEventListener("pointermove", (event) => {
    const [x, y] = local(event);
    if (!drag) {
      setHover(nearest(x, y), event.clientX, event.clientY);
    } else if (drag.pan) {
      view.tx = drag.pan.tx + x - drag.pan.x;
      view.ty = drag.pan.ty + y - drag.pan.y;
      request(2);
    } else {
      const [lx, ly] = drag.lasso[drag.lasso.length - 1];
      if (Math.hypot(x - lx, y - ly) >= 3) drag.lasso.push([x, y]);
      request(1);
    }
  });

  canvas.addEventListener("pointerup", () => {
    if (drag && drag.lasso && drag.lasso.length > 2) selectInside(drag.lasso);
    drag = null;
    request(1);
  });

  canvas.addEventListener("pointerleave", () => drag || setHover(-1));

  canvas.addEventListener(
    "wheel",
    (event) => {
      event.preventDefault();
      const [x, y] = local(event);
      const factor = Math.exp(-event.deltaY * 0.002);
      view.scale *= factor;
      view.tx = x - (x - view.tx) * factor;
      view.ty = y - (y - view.ty) * factor;
      setHover(-1);
      request(2);
    },
    { passive: false },
  );

  $("lasso").addEventListener("click", (event) => {
    lassoMode = !lassoMode;
    event.currentTarget.setAttribute("aria-pressed", String(lassoMode));
    canvas.classList.toggle("lasso", lassoMode);
  });
  $("copy").addEventListener("click", () => withSelection(copySelection));
  $("export").addEventListener("click", () => withSelection(exportSelection));
  $("clear").addEventListener("click", () => {
    selected.fill(0);
    updateCounts();
  });
  $("fit").addEventListener("click", () => {
    fit();
    request(2);
  });
  $("search").addEventListener("input", (event) => search(event.target.value));

  // ---- start --------------------------------------------------------------------------------

  $("title").textContent = data.title;
  document.title = data.title;
  buildLegend();
  buildShow();
  new ResizeObserver(resize).observe(canvas);

  // A small hook for tests and automation: data -> page coordinates and a few counters.
  window.picmap = {
    ready: false, // true once the map has been drawn
    toPage(x, y) {
      const box = canvas.getBoundingClientRect();
      return [box.left + toScreenX(x), box.top + toScreenY(y)];
    },
    visibleCount: () => order.filter(visible).length,
    highlightedCount: () => order.filter((i) => visible(i) && highlighted(i)).length,
    hovered: () => hover,
    selectedNames,
  };
})();
