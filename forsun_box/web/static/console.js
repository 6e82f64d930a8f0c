// forsun-box console: form mode switching, confirmations, live dashboard with SVG charts.
// No dependencies; works under the console's Content-Security-Policy (no inline script).
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var W = 600, H = 160, L = 34, R = 8, T = 10, B = 20;

  function el(name, attrs, parent) {
    var node = document.createElementNS(SVG, name);
    for (var k in attrs) node.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(node);
    return node;
  }

  function niceMax(v) {
    if (v <= 0) return 1;
    var p = Math.pow(10, Math.floor(Math.log10(v)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) if (steps[i] * p >= v) return steps[i] * p;
    return 10 * p;
  }

  function countMax(v) {
    // whole numbers at every gridline: 0, max / 2, max
    var m = Math.max(2, Math.ceil(niceMax(v)));
    return m % 2 ? m + 1 : m;
  }

  function short(n) {
    if (n >= 1e6) return (n / 1e6).toFixed(n % 1e6 ? 1 : 0) + "M";
    if (n >= 1e4) return Math.round(n / 1e3) + "k";
    return String(n);
  }

  function frame(svg, max, labels) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    // draw in the element's own pixels, so text keeps its size at any width
    W = Math.max(200, Math.round(svg.getBoundingClientRect().width) || 600);
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    var y0 = H - B;
    [0, 0.5, 1].forEach(function (f) {
      var y = y0 - f * (y0 - T);
      el("line", { x1: L, x2: W - R, y1: y, y2: y, "class": f ? "grid" : "axis" }, svg);
      el("text", { x: L - 4, y: y + 3, "text-anchor": "end" }, svg).textContent = short(max * f);
    });
    labels.forEach(function (lab, i) {
      var x = L + (W - L - R) * i / (labels.length - 1);
      var anchor = i === 0 ? "start" : (i === labels.length - 1 ? "end" : "middle");
      el("text", { x: x, y: H - 5, "text-anchor": anchor }, svg).textContent = lab;
    });
  }

  function bars(svg, series, max, cls) {
    var n = series.length, y0 = H - B, span = (W - L - R) / n;
    series.forEach(function (v, i) {
      if (!v) return;
      var h = Math.max(1, (y0 - T) * v / max);
      var rect = el("rect", { x: L + i * span + 0.5, y: y0 - h, width: Math.max(1, span - 1),
        height: h, "class": cls }, svg);
      el("title", {}, rect).textContent = v;
    });
  }

  function line(svg, series, max, cls) {
    var n = series.length, y0 = H - B, span = (W - L - R) / n;
    var pts = series.map(function (v, i) {
      return (L + (i + 0.5) * span).toFixed(1) + "," + (y0 - (y0 - T) * v / max).toFixed(1);
    });
    el("polyline", { points: pts.join(" "), "class": cls }, svg);
  }

  function draw(snap) {
    var s = snap.series, up = snap.upcoming;
    var past = ["-60 min", "-45", "-30", "-15", "now"];
    var svg = document.getElementById("chart-firings");
    if (svg) {
      var m = countMax(Math.max.apply(null, s.fired.concat(s.failed)));
      frame(svg, m, past); bars(svg, s.fired, m, "fired"); bars(svg, s.failed, m, "failed");
    }
    svg = document.getElementById("chart-lateness");
    if (svg) {
      var lm = niceMax(Math.max.apply(null, s.p99.concat(s.p50)));
      frame(svg, lm, past); line(svg, s.p50, lm, "p50"); line(svg, s.p99, lm, "p99");
    }
    svg = document.getElementById("chart-upcoming");
    if (svg) {
      var um = countMax(Math.max.apply(null, up.count));
      frame(svg, um, ["now", "+15", "+30", "+45", "+60 min"]); bars(svg, up.count, um, "upcoming");
    }
  }

  function fill(snap) {
    document.querySelectorAll("[data-stat]").forEach(function (node) {
      var v = snap[node.getAttribute("data-stat")];
      if (v !== undefined) node.textContent = v;
    });
  }

  function dashboard() {
    var data = document.getElementById("snapshot");
    if (!data) return;
    draw(JSON.parse(data.textContent));
    var live = document.getElementById("live");
    function poll() {
      fetch("/console/api/stats", { credentials: "same-origin", cache: "no-store" })
        .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
        .then(function (snap) { fill(snap); draw(snap); live.classList.remove("stale"); live.textContent = "live"; })
        .catch(function () { live.classList.add("stale"); live.textContent = "offline"; });
    }
    setInterval(poll, 5000);
  }

  function modes() {
    var form = document.getElementById("plan-form");
    if (!form) return;
    function apply() {
      var checked = form.querySelector("input[name=mode]:checked");
      var mode = checked ? checked.value : "delay";
      form.querySelectorAll("[data-modes]").forEach(function (node) {
        var on = node.getAttribute("data-modes").split(" ").indexOf(mode) >= 0;
        node.classList.toggle("hidden", !on);
      });
    }
    form.querySelectorAll("input[name=mode]").forEach(function (r) { r.addEventListener("change", apply); });
    apply();
  }

  function confirms() {
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (ev) {
        if (!window.confirm(form.getAttribute("data-confirm"))) ev.preventDefault();
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () { modes(); confirms(); dashboard(); });
})();
