/* tallypurse console: charts (Chart.js) from JSON embedded in the page, and small helpers.
   Amounts arrive as integer minor units; they are formatted here with integer arithmetic. */
(function () {
  "use strict";

  var PALETTE = ["#2563eb", "#16a34a", "#f59e0b", "#dc2626", "#7c3aed", "#0891b2", "#db2777",
                 "#65a30d", "#ea580c", "#475569"];

  function money(minor, currency) {
    var sign = minor < 0 ? "-" : "";
    var v = Math.abs(Math.trunc(minor));
    var whole = Math.trunc(v / 100).toLocaleString("en");
    return sign + whole + "." + String(v % 100).padStart(2, "0") + (currency ? " " + currency : "");
  }

  function moneyAxis(currency) {
    return {
      beginAtZero: true,
      ticks: { callback: function (value) { return money(value, ""); } },
      title: { display: true, text: currency }
    };
  }

  function moneyTooltip(currency) {
    return { callbacks: { label: function (ctx) {
      var value = ctx.parsed.y !== undefined ? ctx.parsed.y : ctx.parsed;
      return (ctx.dataset.label ? ctx.dataset.label + ": " : ctx.label + ": ") + money(value, currency);
    } } };
  }

  var BUILDERS = {
    volume: function (spec) {
      return {
        type: "bar",
        data: { labels: spec.labels, datasets: spec.series.map(function (s, i) {
          return { label: s.label, data: s.data, backgroundColor: PALETTE[i % PALETTE.length] };
        }) },
        options: { scales: { x: { stacked: true }, y: Object.assign({ stacked: true }, moneyAxis(spec.currency)) },
                   plugins: { tooltip: moneyTooltip(spec.currency) } }
      };
    },
    shares: function (spec) {
      return {
        type: "doughnut",
        data: { labels: spec.labels, datasets: [{ data: spec.data, backgroundColor: PALETTE.slice(0, 3) }] },
        options: { plugins: { tooltip: moneyTooltip(spec.currency), legend: { position: "right" } } }
      };
    },
    chain: function (spec) {
      return {
        type: "line",
        data: { labels: spec.labels, datasets: [
          { label: "balance after the event", data: spec.after, borderColor: PALETTE[0], backgroundColor: PALETTE[0],
            pointRadius: 3, stepped: "before" },
          // A chain that holds starts each event where the last one ended: every cross sits
          // on a corner of the line; a cross off the line is a break (a clone, a lost upload).
          { label: "balance before the event", data: spec.before, borderColor: PALETTE[3], backgroundColor: PALETTE[3],
            showLine: false, pointStyle: "crossRot", pointRadius: 6 }
        ] },
        options: { scales: { y: moneyAxis(spec.currency) }, plugins: { tooltip: moneyTooltip(spec.currency) } }
      };
    },
    grades: function (spec) {
      return {
        type: "bar",
        data: { labels: spec.labels, datasets: [{ label: "cardholders", data: spec.data, backgroundColor: PALETTE[0] }] },
        options: { scales: { y: { beginAtZero: true, ticks: { precision: 0 } } }, plugins: { legend: { display: false } } }
      };
    },
    events: function (spec) {
      return {
        type: "bar",
        data: { labels: spec.labels, datasets: spec.series.map(function (s, i) {
          return { label: s.label, data: s.data, backgroundColor: PALETTE[i % PALETTE.length] };
        }) },
        options: { scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } } } }
      };
    }
  };

  function renderCharts(root) {
    if (typeof window.Chart === "undefined") { return; }
    window.Chart.defaults.animation = false;
    window.Chart.defaults.maintainAspectRatio = false;
    root.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
      var source = document.getElementById(canvas.dataset.chart);
      var build = BUILDERS[canvas.dataset.kind];
      if (!source || !build) { return; }
      var existing = window.Chart.getChart(canvas);
      if (existing) { existing.destroy(); }
      new window.Chart(canvas, build(JSON.parse(source.textContent)));
      canvas.dataset.rendered = "true";
    });
  }

  function wire(root) {
    root.querySelectorAll("select[data-autosubmit]").forEach(function (select) {
      select.addEventListener("change", function () { select.form.requestSubmit(); });
    });
    renderCharts(root);
  }

  document.addEventListener("DOMContentLoaded", function () { wire(document); });
  document.addEventListener("htmx:load", function (event) {
    if (event.detail && event.detail.elt && event.detail.elt !== document.body) { wire(event.detail.elt); }
  });
  // hx-boost swaps the body: draw the new page's charts.
  document.addEventListener("htmx:afterSettle", function (event) {
    if (event.detail && event.detail.target === document.body) { wire(document); }
  });
})();
