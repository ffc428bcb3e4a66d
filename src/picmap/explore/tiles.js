// picmap served explorer: the map drawn from 256-pixel tiles that the local server renders on
// demand, so a frame copies a few images whatever the number of points. Hovering asks the
// server for the nearest point and shows its image. All user text is shown with textContent.
"use strict";
(() => {
  const meta = JSON.parse(document.getElementById("picmap-data").textContent);
  const $ = (id) => document.getElementById(id);
  const TILE = meta.tilePx;
  const CACHE_LIMIT = 1500; // tiles kept as decoded images
  const HOVER_PX = 6; // how far from a point the pointer may be

  const canvas = $("map");
  const ctx = canvas.getContext("2d");
  const tip = $("tip");
  const hidden = new Set();
  const tiles = new Map(); // key -> {img, loaded}
  const view = { cu: 0.5, cv: 0.5, z: 0 }; // world centre and zoom: scale = TILE * 2^z
  let shownList = -1;
  let pending = false;
  let hover = -1;
  let drag = null;
  let wanted = 0; // tiles of the current view not loaded yet
  let asking = false; // a /near request is out
  let nextAsk = null; // the latest pointer position while one is out

  const scale = () => TILE * 2 ** view.z;
  const params = () => {
    const parts = [];
    if (hidden.size) parts.push(`hide=${[...hidden].sort((a, b) => a - b).join(",")}`);
    if (shownList >= 0) parts.push(`list=${shownList}`);
    return parts.length ? `?${parts.join("&")}` : "";
  };
  const screenX = (u) => Math.round((u - view.cu) * scale() + canvas.width / 2);
  const screenY = (v) => Math.round((v - view.cv) * scale() + canvas.height / 2);
  const toWorld = (x, y) => [
    view.cu + (x - canvas.width / 2) / scale(),
    view.cv + (y - canvas.height / 2) / scale(),
  ];

  function fit() {
    view.cu = 0.5;
    view.cv = 0.5;
    view.z = Math.log2(Math.max(1, Math.min(canvas.width, canvas.height)) / TILE);
  }

  function request() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      draw();
    });
  }

  function tile(level, tx, ty, query) {
    const key = `${level}/${tx}/${ty}${query}`;
    let entry = tiles.get(key);
    if (!entry) {
      entry = { img: new Image(), loaded: false };
      entry.img.onload = () => {
        entry.loaded = true;
        request();
      };
      entry.img.src = `/tile/${key.split("?")[0]}.png${query}`;
      tiles.set(key, entry);
      if (tiles.size > CACHE_LIMIT) tiles.delete(tiles.keys().next().value);
    }
    return entry;
  }

  // The loaded tile nearest above (level, tx, ty), drawn over the area of that tile.
  function drawAncestor(level, tx, ty, query, x, y, w, h) {
    for (let up = 1; up <= Math.min(level, 4); up++) {
      const entry = tiles.get(`${level - up}/${tx >> up}/${ty >> up}${query}`);
      if (entry && entry.loaded) {
        const part = TILE >> up;
        const sx = (tx - ((tx >> up) << up)) * part;
        const sy = (ty - ((ty >> up) << up)) * part;
        ctx.drawImage(entry.img, sx, sy, part, part, x, y, w, h);
        return;
      }
    }
  }

  function draw() {
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    const level = Math.max(0, Math.min(meta.maxZoom, Math.ceil(view.z - 0.01)));
    const count = 2 ** level;
    const size = scale() / count; // on-screen pixels per tile
    const [u0, v0] = toWorld(0, 0);
    const [u1, v1] = toWorld(canvas.width, canvas.height);
    const query = params();
    wanted = 0;
    ctx.imageSmoothingEnabled = size < TILE;
    for (let ty = Math.max(0, Math.floor(v0 * count)); ty <= Math.min(count - 1, v1 * count); ty++) {
      for (let tx = Math.max(0, Math.floor(u0 * count)); tx <= Math.min(count - 1, u1 * count); tx++) {
        // Whole-pixel edges shared with the neighbours: no gap, and no overlap drawn twice.
        const x = screenX(tx / count);
        const y = screenY(ty / count);
        const w = screenX((tx + 1) / count) - x;
        const h = screenY((ty + 1) / count) - y;
        const entry = tile(level, tx, ty, query);
        if (entry.loaded) {
          ctx.drawImage(entry.img, x, y, w, h);
        } else {
          wanted++;
          drawAncestor(level, tx, ty, query, x, y, w, h);
        }
      }
    }
    if (wanted === 0) window.picmap.ready = true;
    $("status").textContent = wanted ? "drawing…" : "";
  }

  function resize() {
    const box = canvas.getBoundingClientRect();
    const first = canvas.width === 300 && canvas.height === 150; // the canvas default
    canvas.width = Math.max(1, Math.round(box.width));
    canvas.height = Math.max(1, Math.round(box.height));
    if (first) fit();
    request();
  }

  // ---- hover: the server finds the point ----------------------------------------------------

  async function ask(x, y, clientX, clientY) {
    if (asking) {
      nextAsk = [x, y, clientX, clientY];
      return;
    }
    asking = true;
    const [u, v] = toWorld(x, y);
    const hide = hidden.size ? `&hide=${[...hidden].join(",")}` : "";
    try {
      const answer = await fetch(`/near?x=${u}&y=${v}&r=${HOVER_PX / scale()}${hide}`);
      show(await answer.json(), clientX, clientY);
    } finally {
      asking = false;
      if (nextAsk) {
        const next = nextAsk;
        nextAsk = null;
        ask(...next);
      }
    }
  }

  function show(point, clientX, clientY) {
    if (!point || drag) {
      hover = -1;
      tip.hidden = true;
      return;
    }
    hover = point.index;
    $("tip-label").textContent = point.label === null ? "" : point.label;
    $("tip-name").textContent = point.name;
    $("tip-lists").textContent = point.lists.join(", ");
    $("thumb").src = meta.images ? `/thumb/${point.index}.png` : "";
    tip.hidden = false;
    tip.style.left = `${Math.min(clientX + 14, window.innerWidth - tip.offsetWidth - 4)}px`;
    tip.style.top = `${Math.min(clientY + 14, window.innerHeight - tip.offsetHeight - 4)}px`;
  }

  // ---- controls -----------------------------------------------------------------------------

  function buildLegend() {
    if (!meta.classNames) return;
    buildClassLegend($("legend"), meta.classNames, meta.colors, meta.counts, (c, off) => {
      if (off) hidden.add(c);
      else hidden.delete(c);
      show(null);
      window.picmap.ready = false;
      request();
    });
  }

  function buildShow() {
    if (!meta.lists.length) return;
    meta.lists.forEach((list, k) => {
      const option = document.createElement("option");
      option.value = String(k);
      option.textContent = `${list.name} (${list.count})`;
      $("show").append(option);
    });
    $("show").addEventListener("change", (event) => {
      shownList = Number(event.target.value);
      window.picmap.ready = false;
      request();
    });
    $("show-box").hidden = false;
  }

  function local(event) {
    const box = canvas.getBoundingClientRect();
    return [event.clientX - box.left, event.clientY - box.top];
  }

  canvas.addEventListener("pointerdown", (event) => {
    const [x, y] = local(event);
    canvas.setPointerCapture(event.pointerId);
    show(null);
    drag = { x, y, cu: view.cu, cv: view.cv };
  });
  canvas.addEventListener("pointermove", (event) => {
    const [x, y] = local(event);
    if (!drag) {
      ask(x, y, event.clientX, event.clientY);
      return;
    }
    view.cu = drag.cu - (x - drag.x) / scale();
    view.cv = drag.cv - (y - drag.y) / scale();
    request();
  });
  canvas.addEventListener("pointerup", () => {
    drag = null;
  });
  canvas.addEventListener("pointerleave", () => drag || show(null));
  canvas.addEventListener(
    "wheel",
    (event) => {
      event.preventDefault();
      zoomAt(...local(event), -event.deltaY * 0.002);
      show(null);
      request();
    },
    { passive: false },
  );
  $("fit").addEventListener("click", () => {
    fit();
    request();
  });

  // Zoom by 2^steps about screen point (x, y), within the levels the server draws.
  function zoomAt(x, y, steps) {
    const [u, v] = toWorld(x, y);
    view.z = Math.max(-2, Math.min(meta.maxZoom + 1, view.z + steps));
    view.cu = u - (x - canvas.width / 2) / scale();
    view.cv = v - (y - canvas.height / 2) / scale();
  }

  // ---- start --------------------------------------------------------------------------------

  $("title").textContent = meta.title;
  document.title = meta.title;
  $("count").textContent = `${meta.n.toLocaleString("en")} images`;
  buildLegend();
  buildShow();
  new ResizeObserver(resize).observe(canvas);

  // A small hook for tests and benchmarks.
  window.picmap = {
    ready: false, // true once every tile of the view is drawn
    toPage(x, y) {
      const box = canvas.getBoundingClientRect();
      const u = (x - meta.centre[0]) / meta.span + 0.5;
      const v = 0.5 - (y - meta.centre[1]) / meta.span;
      return [
        box.left + (u - view.cu) * scale() + canvas.width / 2,
        box.top + (v - view.cv) * scale() + canvas.height / 2,
      ];
    },
    hovered: () => hover,
    zoomAt,
    // Milliseconds per frame: `frames` pans, then `frames` zoom steps, each drawn at once (the
    // one-pixel read makes the canvas finish drawing before the clock stops).
    frameTimes(frames = 20) {
      const times = { pan: [], zoom: [] };
      for (const kind of ["pan", "zoom"]) {
        for (let i = 0; i < frames; i++) {
          if (kind === "pan") view.cu += 20 / scale();
          else zoomAt(canvas.width / 2, canvas.height / 2, 0.1);
          const started = performance.now();
          draw();
          ctx.getImageData(0, 0, 1, 1);
          times[kind].push(performance.now() - started);
        }
      }
      return times;
    },
  };
})();
