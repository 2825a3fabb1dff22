// Polls the session's new transactions every two seconds and adds them to the table. DOM methods
// only (no innerHTML): every text comes from the system under test.
(function () {
  "use strict";
  var table = document.getElementById("transactions");
  if (!table || table.dataset.open !== "yes") { return; }
  var body = table.tBodies[0];
  var since = parseInt(table.dataset.since, 10) || 0;
  var url = "/integrator/transactions?id=" + encodeURIComponent(table.dataset.session) + "&since=";

  function cell(row, text, cls) {
    var td = row.insertCell(-1);
    if (cls) { td.className = cls; }
    if (text !== undefined) { td.textContent = text; }
    return td;
  }

  function badge(passed) {
    var span = document.createElement("span");
    span.className = "badge " + (passed ? "outcome-success" : "outcome-failure");
    span.textContent = passed ? "passed" : "failed";
    return span;
  }

  function add(t) {
    var row = body.insertRow(-1);
    row.dataset.id = t.id;
    cell(row, String(t.id), "num");
    cell(row, t.received_at);
    cell(row, t.transaction);
    cell(row).appendChild(badge(t.passed));
    var list = document.createElement("ul");
    list.className = "plain findings";
    t.findings.forEach(function (f) {
      var li = document.createElement("li");
      li.className = f.passed ? "ok-line" : "bad";
      li.textContent = f.rule + (f.passed ? " passed" : " FAILED: expected " + f.expected + "; got " + f.actual + " [" + f.ref + "]");
      list.appendChild(li);
    });
    cell(row).appendChild(list);
    since = Math.max(since, t.id);
    var none = document.getElementById("no-transactions");
    if (none) { none.hidden = true; }
  }

  function poll() {
    fetch(url + since, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (doc) {
        if (!doc) { return; }
        doc.transactions.forEach(add);
        if (!doc.open) {
          var state = document.getElementById("session-state");
          if (state) { state.textContent = "closed"; state.className = "badge"; }
          return;
        }
        window.setTimeout(poll, 2000);
      })
      .catch(function () { window.setTimeout(poll, 5000); });
  }
  window.setTimeout(poll, 2000);
}());
