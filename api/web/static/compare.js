// Comparison viewer: reference and aligned candidate on canvases with one shared zoom/pan,
// side by side, wipe or overlay, and the explanation's cells drawn on both. No libraries.
(function () {
  "use strict";
  var root = document.getElementById("compare");
  if (!root) return;
  var cells = JSON.parse(document.getElementById("cells-data").textContent || "[]");
  var panes = document.getElementById("panes");
  var cvRef = document.getElementById("cv-ref"), cvTgt = document.getElementById("cv-tgt"),
      cvMix = document.getElementById("cv-mix");
  var mix = document.getElementById("mix"), readout = document.getElementById("readout");
  var imgRef = new Image(), imgTgt = new Image();
  var state = { scale: 1, tx: 0, ty: 0, fitted: false, mode: "side", cells: "all", mix: 0.5 };
  var COLORS = { cmc: "#00c853", high: "#ff9100", low: "#9e9e9e" };
  var loaded = 0;

  function canvases() { return state.mode === "side" ? [cvRef, cvTgt] : [cvMix]; }

  function sizeCanvas(cv) {
    var r = cv.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
    var w = Math.max(50, Math.round(r.width * dpr)), h = Math.max(50, Math.round(r.height * dpr));
    if (cv.width !== w || cv.height !== h) { cv.width = w; cv.height = h; }
  }

  function fit() {
    var cv = canvases()[0]; sizeCanvas(cv);
    var iw = imgRef.naturalWidth || 1, ih = imgRef.naturalHeight || 1;
    state.scale = Math.min(cv.width / iw, cv.height / ih);
    state.tx = (cv.width - iw * state.scale) / 2; state.ty = (cv.height - ih * state.scale) / 2;
    state.fitted = true;
  }

  function drawCells(ctx) {
    if (state.cells === "none") return;
    for (var i = 0; i < cells.length; i++) {
      var c = cells[i];
      if (state.cells === "cmc" && !c.cmc) continue;
      ctx.strokeStyle = COLORS[c.status] || COLORS.low;
      ctx.lineWidth = (c.cmc ? 2.5 : 1) / state.scale;
      ctx.strokeRect(c.x0, c.y0, c.size, c.size);
    }
  }

  function draw(cv, which) {
    sizeCanvas(cv);
    var ctx = cv.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#ffffff"; ctx.fillRect(0, 0, cv.width, cv.height);
    ctx.imageSmoothingEnabled = state.scale < 2;
    ctx.setTransform(state.scale, 0, 0, state.scale, state.tx, state.ty);
    if (which === "ref") ctx.drawImage(imgRef, 0, 0);
    else if (which === "tgt") ctx.drawImage(imgTgt, 0, 0);
    else if (state.mode === "wipe") {
      ctx.drawImage(imgRef, 0, 0);
      var split = cv.width * state.mix;
      ctx.save(); ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.beginPath(); ctx.rect(split, 0, cv.width - split, cv.height); ctx.clip();
      ctx.setTransform(state.scale, 0, 0, state.scale, state.tx, state.ty);
      ctx.fillStyle = "#ffffff"; ctx.fillRect(-1e5, -1e5, 2e5, 2e5);
      ctx.drawImage(imgTgt, 0, 0); ctx.restore();
      ctx.setTransform(state.scale, 0, 0, state.scale, state.tx, state.ty);
      drawCells(ctx);
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.strokeStyle = "#e53e3e"; ctx.lineWidth = 2;
      ctx.beginPath(); ctx.moveTo(split, 0); ctx.lineTo(split, cv.height); ctx.stroke();
      return;
    } else {
      ctx.drawImage(imgRef, 0, 0);
      ctx.globalAlpha = state.mix; ctx.drawImage(imgTgt, 0, 0); ctx.globalAlpha = 1;
    }
    drawCells(ctx);
  }

  function redraw() {
    if (loaded < 2) return;
    if (!state.fitted) fit();
    if (state.mode === "side") { draw(cvRef, "ref"); draw(cvTgt, "tgt"); } else draw(cvMix, "mix");
  }

  function zoomAt(cv, factor, cx, cy) {
    var s = Math.min(40, Math.max(0.05, state.scale * factor)); factor = s / state.scale;
    state.tx = cx - (cx - state.tx) * factor; state.ty = cy - (cy - state.ty) * factor; state.scale = s;
    redraw();
  }

  function canvasPoint(cv, ev) {
    var r = cv.getBoundingClientRect(), k = cv.width / r.width;
    return [(ev.clientX - r.left) * k, (ev.clientY - r.top) * k];
  }

  function cellAt(px, py) {
    for (var i = 0; i < cells.length; i++) {
      var c = cells[i];
      if (px >= c.x0 && px < c.x0 + c.size && py >= c.y0 && py < c.y0 + c.size) return c;
    }
    return null;
  }

  [cvRef, cvTgt, cvMix].forEach(function (cv) {
    var drag = null;
    cv.addEventListener("wheel", function (ev) {
      ev.preventDefault();
      var p = canvasPoint(cv, ev);
      zoomAt(cv, Math.exp(-ev.deltaY * 0.0015), p[0], p[1]);
    }, { passive: false });
    cv.addEventListener("pointerdown", function (ev) {
      drag = { x: ev.clientX, y: ev.clientY }; cv.setPointerCapture(ev.pointerId); cv.classList.add("dragging");
    });
    cv.addEventListener("pointermove", function (ev) {
      var p = canvasPoint(cv, ev);
      if (drag) {
        var k = cv.width / cv.getBoundingClientRect().width;
        state.tx += (ev.clientX - drag.x) * k; state.ty += (ev.clientY - drag.y) * k;
        drag = { x: ev.clientX, y: ev.clientY }; redraw();
      }
      var ix = (p[0] - state.tx) / state.scale, iy = (p[1] - state.ty) / state.scale, c = cellAt(ix, iy);
      readout.textContent = "x " + Math.round(ix) + ", y " + Math.round(iy) + " px" + (c ?
        " - cell r" + c.row + " c" + c.col + ": corr " + (c.corr === null ? "n/a" : c.corr.toFixed(2)) +
        (c.cmc ? ", congruent (CMC)" : c.status === "high" ? ", high correlation, not congruent" : "") : "");
    });
    function end(ev) { drag = null; cv.classList.remove("dragging"); }
    cv.addEventListener("pointerup", end); cv.addEventListener("pointercancel", end);
    cv.addEventListener("dblclick", function () { fit(); redraw(); });
  });

  document.querySelectorAll('input[name="mode"]').forEach(function (r) {
    r.addEventListener("change", function () {
      state.mode = r.value;
      panes.className = "panes " + (state.mode === "side" ? "side" : "mix");
      document.getElementById("mix-caption").textContent = state.mode === "wipe" ?
        "wipe: reference left of the line, aligned candidate right" : "overlay: aligned candidate over the reference";
      state.fitted = false; redraw();
    });
  });
  document.querySelectorAll('input[name="cells"]').forEach(function (r) {
    r.addEventListener("change", function () { state.cells = r.value; redraw(); });
  });
  mix.addEventListener("input", function () { state.mix = mix.value / 100; redraw(); });
  document.getElementById("zoom-in").addEventListener("click", function () {
    var cv = canvases()[0]; zoomAt(cv, 1.5, cv.width / 2, cv.height / 2);
  });
  document.getElementById("zoom-out").addEventListener("click", function () {
    var cv = canvases()[0]; zoomAt(cv, 1 / 1.5, cv.width / 2, cv.height / 2);
  });
  document.getElementById("zoom-fit").addEventListener("click", function () { fit(); redraw(); });
  window.addEventListener("resize", function () { redraw(); });  // keeps the zoom

  function onload() { loaded += 1; if (loaded === 2) { root.dataset.ready = "1"; redraw(); } }
  function onerror() { readout.textContent = "the images could not be loaded"; }
  imgRef.onload = onload; imgTgt.onload = onload; imgRef.onerror = onerror; imgTgt.onerror = onerror;
  imgRef.src = root.dataset.refSrc; imgTgt.src = root.dataset.tgtSrc;
  // exposed for tests and the console: the shared view transform
  window.ballisticViewer = { state: state, redraw: redraw };
})();
