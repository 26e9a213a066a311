/* featharm report: sortable and filterable tables, the feature explorer, the copy button.
   No network, no external library; user strings are only ever set as text (textContent), never as markup.
   Without JavaScript the page shows every table in full and the explorer's first feature as an image. */
(function () {
  "use strict";
  var NUM = /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?%?$/;
  function cellValue(td) {
    var t = td.textContent.trim();
    return NUM.test(t) ? parseFloat(t) : t.toLowerCase();
  }
  function setupTable(table) {
    var body = table.tBodies[0];
    if (!body) { return; }
    var heads = table.tHead ? table.tHead.rows[0].cells : [];
    Array.prototype.forEach.call(heads, function (th, col) {
      th.classList.add("sortable");
      th.title = "sort by this column";
      th.addEventListener("click", function () {
        var asc = th.getAttribute("aria-sort") !== "ascending";
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        var rows = Array.prototype.slice.call(body.rows).map(function (r, i) {
          return {row: r, key: r.cells[col] ? cellValue(r.cells[col]) : "", i: i};
        });
        rows.sort(function (a, b) {
          var x = a.key, y = b.key, c;
          if (typeof x === "number" && typeof y === "number") { c = x - y; }
          else if (typeof x === "number") { c = -1; }
          else if (typeof y === "number") { c = 1; }
          else { c = x < y ? -1 : (x > y ? 1 : 0); }
          return (asc ? c : -c) || a.i - b.i;
        });
        rows.forEach(function (r) { body.appendChild(r.row); });
      });
    });
    if (table.classList.contains("filterable")) {
      var box = document.createElement("p");
      box.className = "filter";
      var input = document.createElement("input");
      input.type = "search";
      input.placeholder = "filter rows";
      input.setAttribute("aria-label", "filter the rows of this table");
      var count = document.createElement("span");
      count.className = "note";
      var total = body.rows.length;
      count.textContent = " " + total + " rows";
      input.addEventListener("input", function () {
        var q = input.value.trim().toLowerCase(), shown = 0;
        Array.prototype.forEach.call(body.rows, function (r) {
          var hit = !q || r.textContent.toLowerCase().indexOf(q) >= 0;
          r.hidden = !hit;
          if (hit) { shown += 1; }
        });
        count.textContent = " " + shown + " of " + total + " rows";
      });
      box.appendChild(input);
      box.appendChild(count);
      var wrap = table.parentNode;
      wrap.parentNode.insertBefore(box, wrap);
    }
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.data"), setupTable);

  /* ---------------------------------------------------------------- feature explorer */
  var TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf"];
  var TAB20 = ["#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728", "#ff9896",
               "#9467bd", "#c5b0d5", "#8c564b", "#c49c94", "#e377c2", "#f7b6d2", "#7f7f7f", "#c7c7c7",
               "#bcbd22", "#dbdb8d", "#17becf", "#9edae5"];
  var SVGNS = "http://www.w3.org/2000/svg";
  function el(name, attrs, text) {
    var e = document.createElementNS(SVGNS, name);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function ticks(lo, hi) {
    var span = hi - lo, raw = span / 5, mag = Math.pow(10, Math.floor(Math.log(raw) / Math.LN10));
    var step = [1, 2, 5, 10].map(function (m) { return m * mag; }).filter(function (s) { return s >= raw; })[0];
    var out = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) { out.push(+v.toPrecision(12)); }
    return out;
  }
  function decode(text) {  /* base64 of little-endian uint16 codes */
    var bin = atob(text), out = new Uint16Array(bin.length / 2);
    for (var i = 0; i < out.length; i += 1) { out[i] = bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8); }
    return out;
  }
  function boxes(data, codes, j) {  /* the 5 box statistics of every site for feature j (null: missing) */
    var m = data.sites.length, out = [], lo = data.lo[j], span = data.span[j];
    for (var i = 0; i < m; i += 1) {
      var b = [];
      for (var k = 0; k < 5; k += 1) {
        var c = codes[(j * m + i) * 5 + k];
        b.push(c > data.levels ? null : lo + c / data.levels * span);
      }
      out.push(b);
    }
    return out;
  }
  function drawFeature(data, j, host) {
    var sites = data.sites, palette = sites.length <= 10 ? TAB10 : TAB20;
    var n = Array.isArray(data.n[0]) ? data.n[j] : data.n;
    var f = {name: data.features[j], n: n, before: boxes(data, data.codes.before, j),
             after: data.codes.after ? boxes(data, data.codes.after, j) : null};
    var panels = [["before", f.before]];
    if (f.after) { panels.push(["after", f.after]); }
    var lo = Infinity, hi = -Infinity;
    panels.forEach(function (p) {
      p[1].forEach(function (b) {
        if (b[0] !== null) { lo = Math.min(lo, b[0]); hi = Math.max(hi, b[4]); }
      });
    });
    if (!isFinite(lo)) { lo = 0; hi = 1; }
    if (hi === lo) { lo -= 0.5; hi += 0.5; }
    var pad = 0.04 * (hi - lo); lo -= pad; hi += pad;
    var width = Math.max(640, Math.min(host.clientWidth || 1200, 1400) - 20);
    var longest = sites.reduce(function (m, s, i) { return Math.max(m, (s + " (n=" + f.n[i] + ")").length); }, 0);
    var label = Math.min(260, 12 + 6.2 * longest), gap = 24, bottom = 34;
    var row = Math.max(16, Math.min(36, Math.floor(220 / sites.length))), top = sites.length > 20 ? 40 : 26;
    var pw = (width - label - gap * panels.length) / panels.length;
    var height = top + row * sites.length + bottom;
    var svg = el("svg", {width: width, height: height, viewBox: "0 0 " + width + " " + height,
                         role: "img", "font-size": "11", "font-family": "sans-serif"});
    svg.appendChild(el("title", {}, f.name + ": distribution by site before and after harmonization"));
    sites.forEach(function (s, i) {
      svg.appendChild(el("text", {x: label - 6, y: top + row * i + row / 2 + 4, "text-anchor": "end"},
                         s + " (n=" + f.n[i] + ")"));
    });
    var tks = ticks(lo, hi);
    panels.forEach(function (p, k) {
      var x0 = label + k * (pw + gap);
      var sx = function (v) { return x0 + (v - lo) / (hi - lo) * pw; };
      svg.appendChild(el("text", {x: x0 + pw / 2, y: 16, "text-anchor": "middle", "font-weight": "bold"},
                         f.name + " (" + p[0] + ")"));
      svg.appendChild(el("rect", {x: x0, y: top, width: pw, height: row * sites.length, fill: "none",
                                  stroke: "#999"}));
      tks.forEach(function (t) {
        var x = sx(t);
        svg.appendChild(el("line", {x1: x, x2: x, y1: top, y2: top + row * sites.length, stroke: "#eee"}));
        svg.appendChild(el("text", {x: x, y: top + row * sites.length + 14, "text-anchor": "middle"},
                           String(t)));
        if (sites.length > 20) {  /* a long list scrolls: the scale on top too */
          svg.appendChild(el("text", {x: x, y: top - 5, "text-anchor": "middle"}, String(t)));
        }
      });
      p[1].forEach(function (b, i) {
        if (b[0] === null) { return; }
        var y = top + row * i, c = palette[i % palette.length], mid = y + row / 2, pad = Math.max(2, row * 0.2);
        svg.appendChild(el("line", {x1: sx(b[0]), x2: sx(b[4]), y1: mid, y2: mid, stroke: "#333"}));
        svg.appendChild(el("rect", {x: sx(b[1]), y: y + pad, width: Math.max(1, sx(b[3]) - sx(b[1])),
                                    height: row - 2 * pad, fill: c, "fill-opacity": "0.8", stroke: "#333"}));
        svg.appendChild(el("line", {x1: sx(b[2]), x2: sx(b[2]), y1: y + pad, y2: y + row - pad, stroke: "#000",
                                    "stroke-width": "2"}));
      });
    });
    while (host.firstChild) { host.removeChild(host.firstChild); }
    host.appendChild(svg);
  }
  var fx = document.getElementById("fx");
  var source = document.getElementById("fx-data");
  if (fx && source) {
    var data = JSON.parse(source.textContent);
    data.codes = {before: decode(data.before), after: data.after ? decode(data.after) : null};
    var select = document.getElementById("fx-select"), host = document.getElementById("fx-plot");
    var info = document.getElementById("fx-effect");
    var show = function () {
      var j = parseInt(select.value, 10) || 0, e = data.effect ? data.effect[j] : null;
      info.textContent = e === null || e === undefined ? "" : " " + data.effect_name + " before: " + e;
      drawFeature(data, j, host);
    };
    Array.prototype.forEach.call(fx.querySelectorAll("[hidden]"), function (n) { n.hidden = false; });
    fx.querySelector(".fx-static").hidden = true;
    select.addEventListener("change", show);
    show();
  }

  /* ---------------------------------------------------------------- methods text */
  var copy = document.getElementById("copy-methods");
  if (copy) {
    copy.parentNode.hidden = false;
    copy.addEventListener("click", function () {
      var text = document.getElementById("methods-text").textContent;
      var state = document.getElementById("copy-state");
      var fallback = function () {
        var range = document.createRange();
        range.selectNodeContents(document.getElementById("methods-text"));
        var sel = window.getSelection();
        sel.removeAllRanges();
        sel.addRange(range);
        state.textContent = " selected: press Ctrl+C (Cmd+C) to copy";
      };
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(text).then(function () { state.textContent = " copied"; }, fallback);
      } else { fallback(); }
    });
  }
}());
