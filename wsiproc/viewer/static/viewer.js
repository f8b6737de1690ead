// wsiproc view: one slide with its heatmap in OpenSeadragon. Every number comes from the
// settings block the server writes into the page; every request goes to the same server.
(function () {
  "use strict";

  var settings = JSON.parse(document.getElementById("wsiproc-settings").textContent);
  var OUTLINE_MIN_PX = 12; // draw window outlines once a window is this wide on screen
  var SCALEBAR_PX = 120; // the scale bar is at most this wide
  var HOME_MARGIN_PX = 8; // the home view keeps the slide this far inside the viewer's edges
  var $ = function (id) { return document.getElementById(id); };
  var state = {
    heat: null, output: null, colormap: null, opacity: 0.6,
    windows: [], outlinesFor: null, selected: null, pending: 0,
  };

  if (!settings.dzi) {
    $("viewer").classList.add("empty");
    $("viewer").textContent = "The slide cannot be shown (see above).";
    window.wsiproc = { settings: settings, isIdle: function () { return true; } };
    return;
  }

  var viewer = OpenSeadragon({
    id: "viewer",
    prefixUrl: settings["static"] + "openseadragon/images/",
    tileSources: settings.dzi,
    drawer: "canvas",
    showNavigator: true,
    navigatorPosition: "BOTTOM_RIGHT",
    gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
    maxZoomPixelRatio: 4,
    visibilityRatio: 0.5,
    // Home fits the whole slide inside the viewer (the area beside the side panel), clear of
    // its edges: OpenSeadragon fits the home bounds into the area inside these margins.
    viewportMargins: {
      left: HOME_MARGIN_PX, top: HOME_MARGIN_PX, right: HOME_MARGIN_PX, bottom: HOME_MARGIN_PX,
    },
    timeout: 120000,
  });

  function slideItem() { return viewer.world.getItemAt(0); }

  // --- heatmap layer, its controls and legend ---------------------------------------------
  function heatmapUrl() {
    // Each layer (the patch model's outputs, the slide model's attention) has its own URL.
    return settings.heatmap.urls[state.output] + encodeURIComponent(state.colormap) + ".dzi";
  }

  function showHeatmap() {
    var old = state.heat;
    state.heat = null;
    state.pending += 1;
    viewer.addTiledImage({
      tileSource: heatmapUrl(),
      x: 0, y: 0, width: 1,
      opacity: state.opacity,
      success: function (event) {
        if (old) { viewer.world.removeItem(old); }
        state.heat = event.item;
        state.pending -= 1;
      },
      error: function () { state.pending -= 1; },
    });
    updateLegend();
  }

  function formatValue(v) {
    return Math.abs(v) >= 1000 || (Math.abs(v) < 0.01 && v !== 0) ? v.toExponential(3) : v.toPrecision(4);
  }

  function updateLegend() {
    var range = settings.heatmap.ranges[state.output];
    $("legend-bar").src = "/colormap/" + encodeURIComponent(state.colormap) + ".png";
    $("legend-min").textContent = formatValue(range[0]);
    $("legend-max").textContent = formatValue(range[1]);
  }

  function fillSelect(select, names, chosen) {
    names.forEach(function (name) {
      var option = document.createElement("option");
      option.value = name;
      option.textContent = name;
      option.selected = name === chosen;
      select.appendChild(option);
    });
  }

  if (settings.heatmap) {
    state.output = settings.heatmap.output;
    state.colormap = settings.heatmap.colormap;
    fillSelect($("output"), settings.heatmap.outputs, state.output);
    fillSelect($("colormap"), settings.heatmap.colormaps, state.colormap);
    $("output").addEventListener("change", function (e) { state.output = e.target.value; showHeatmap(); });
    $("colormap").addEventListener("change", function (e) { state.colormap = e.target.value; showHeatmap(); });
    $("opacity").addEventListener("input", function (e) {
      state.opacity = Number(e.target.value) / 100;
      $("opacity-value").textContent = e.target.value + "%";
      if (state.heat) { state.heat.setOpacity(state.opacity); }
    });
    viewer.addOnceHandler("open", showHeatmap);
  } else {
    ["output", "colormap", "opacity"].forEach(function (id) { $(id).disabled = true; });
    $("legend").textContent = "No heatmap for this slide.";
  }

  // --- window outlines (high zoom) and the clicked window ---------------------------------
  var outlines = document.createElement("canvas");
  outlines.id = "outlines";
  viewer.canvas.appendChild(outlines);

  function windowScreenPx() {
    var item = slideItem();
    if (!item || !settings.windows) { return 0; }
    var a = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(0, 0));
    var b = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(settings.windows.kernelL0, 0));
    return b.x - a.x;
  }

  function fetchOutlines() {
    var item = slideItem();
    if (!item || !settings.windows || windowScreenPx() < OUTLINE_MIN_PX) {
      state.windows = [];
      drawOutlines();
      return;
    }
    // With margins: the whole viewer element, margins included, shows the slide.
    var r = item.viewportToImageRectangle(viewer.viewport.getBoundsWithMargins(true));
    var query = "?x=" + r.x + "&y=" + r.y + "&w=" + r.width + "&h=" + r.height;
    if (query === state.outlinesFor) { return; }
    state.outlinesFor = query;
    state.pending += 1;
    fetch(settings.windows.inView + query)
      .then(function (response) { return response.json(); })
      .then(function (data) { state.windows = data.windows; drawOutlines(); })
      .finally(function () { state.pending -= 1; });
  }

  function drawOutlines() {
    var item = slideItem();
    var width = viewer.canvas.clientWidth, height = viewer.canvas.clientHeight;
    if (outlines.width !== width || outlines.height !== height) {
      outlines.width = width;
      outlines.height = height;
    }
    var ctx = outlines.getContext("2d");
    ctx.clearRect(0, 0, width, height);
    if (!item) { return; }
    function box(w, style, lineWidth) {
      var a = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(w[2], w[3]));
      var b = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(w[2] + w[4], w[3] + w[5]));
      ctx.strokeStyle = style;
      ctx.lineWidth = lineWidth;
      ctx.strokeRect(a.x, a.y, b.x - a.x, b.y - a.y);
    }
    if (windowScreenPx() >= OUTLINE_MIN_PX) {
      state.windows.forEach(function (w) { box(w, "rgba(255, 255, 255, 0.7)", 1); });
    }
    if (state.selected) {
      box(state.selected, "#000", 4);
      box(state.selected, "#fff", 2);
    }
  }

  // The slide model's attention of the patch under the click (its own grid), if it has one.
  function showAttention(attention) {
    if (!attention) { return; }
    var table = document.createElement("table");
    table.id = "attention-table";
    Object.keys(attention).forEach(function (name) {
      var tr = table.insertRow();
      var th = document.createElement("th");
      th.textContent = "Attention: " + name;
      tr.appendChild(th);
      tr.insertCell().textContent = attention[name];
    });
    $("window-info").appendChild(table);
  }

  function showWindow(data) {
    var info = $("window-info");
    info.textContent = "";
    if (!data.fields) {
      state.selected = null;
      info.textContent = data.row === null ? "Outside the window grid." :
        "No window at row " + data.row + ", col " + data.col +
        " (too little tissue: not processed, so no CSV row).";
      showAttention(data.attention);
      drawOutlines();
      return;
    }
    var table = document.createElement("table");
    table.id = "window-table";
    data.columns.forEach(function (name, i) {
      var tr = table.insertRow();
      var th = document.createElement("th");
      th.textContent = name;
      tr.appendChild(th);
      tr.insertCell().textContent = data.fields[i];
    });
    info.appendChild(table);
    showAttention(data.attention);
    var col = function (name) { return Number(data.fields[data.columns.indexOf(name)]); };
    state.selected = [col("row"), col("col"), col("x"), col("y"), col("width"), col("height")];
    drawOutlines();
  }

  viewer.addHandler("canvas-click", function (event) {
    if (!event.quick || !settings.windows) { return; }
    var p = slideItem().viewerElementToImageCoordinates(event.position);
    state.pending += 1;
    fetch(settings.windows.at + "?x=" + p.x + "&y=" + p.y)
      .then(function (response) { return response.json(); })
      .then(showWindow)
      .finally(function () { state.pending -= 1; });
  });

  // --- scale bar --------------------------------------------------------------------------
  function drawScalebar() {
    var item = slideItem();
    if (!item) { return; }
    if (!settings.mpp) {
      $("scalebar-label").textContent = "no scale: pixel size unknown";
      return;
    }
    var a = item.viewerElementToImageCoordinates(new OpenSeadragon.Point(0, 0));
    var b = item.viewerElementToImageCoordinates(new OpenSeadragon.Point(100, 0));
    var umPerPx = (b.x - a.x) / 100 * settings.mpp;
    var most = umPerPx * SCALEBAR_PX;
    var power = Math.pow(10, Math.floor(Math.log10(most)));
    var length = [5, 2, 1].map(function (f) { return f * power; }).find(function (v) { return v <= most; });
    $("scalebar-bar").style.width = (length / umPerPx).toFixed(1) + "px";
    $("scalebar-label").textContent = length >= 1000 ? (length / 1000) + " mm" : length + " µm";
    $("scalebar").dataset.um = String(length);
    $("scalebar").dataset.px = String(length / umPerPx);
  }

  // --- navigator: only while part of the slide is out of view (at home it would cover the
  // slide's corner and show nothing the view does not) ------------------------------------
  function updateNavigator() {
    var item = slideItem();
    if (!item || !viewer.navigator) { return; }
    var size = item.getContentSize();
    var a = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(0, 0));
    var b = item.imageToViewerElementCoordinates(size);
    var whole = a.x >= -0.5 && a.y >= -0.5 &&
      b.x <= viewer.container.clientWidth + 0.5 && b.y <= viewer.container.clientHeight + 0.5;
    viewer.navigator.element.style.visibility = whole ? "hidden" : "";
  }

  viewer.addHandler("update-viewport", function () {
    drawOutlines(); drawScalebar(); updateNavigator();
  });
  viewer.addHandler("animation-finish", fetchOutlines);
  viewer.addHandler("open", fetchOutlines);
  viewer.addHandler("resize", fetchOutlines);

  // --- state for tests and scripts --------------------------------------------------------
  window.wsiproc = {
    settings: settings,
    viewer: viewer,
    state: state,
    // Page (CSS pixel) coordinates of a level-0 point of the slide.
    pageFromImage: function (x, y) {
      var p = slideItem().imageToViewerElementCoordinates(new OpenSeadragon.Point(x, y));
      var rect = viewer.element.getBoundingClientRect();
      return [rect.left + p.x, rect.top + p.y];
    },
    // True once every layer has drawn all its tiles, nothing moves and no request is pending.
    isIdle: function () {
      var world = viewer.world, vp = viewer.viewport;
      if (world.getItemCount() < (settings.heatmap ? 2 : 1) || state.pending > 0) { return false; }
      if (settings.heatmap && !state.heat) { return false; }
      for (var i = 0; i < world.getItemCount(); i++) {
        if (!world.getItemAt(i).getFullyLoaded()) { return false; }
      }
      return !world.needsDraw() && vp.getZoom(true) === vp.getZoom(false) &&
        vp.getCenter(true).equals(vp.getCenter(false));
    },
  };
})();
