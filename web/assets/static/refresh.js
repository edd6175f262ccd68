// Refreshes the dashboard's <main> every data-interval seconds while the tab
// is visible, and at once when it becomes visible again. Hidden tabs ask for
// nothing. Without JavaScript, a <noscript> meta refresh does the same
// (without the pause).
(function () {
  var script = document.currentScript;
  var ms = Math.max(1, Number(script.dataset.interval) || 5) * 1000;
  var busy = false;
  function refresh() {
    if (busy || document.visibilityState !== "visible") return;
    busy = true;
    fetch(location.href, { cache: "no-store", credentials: "same-origin" })
      .then(function (r) { return r.text(); })
      .then(function (text) {
        var next = new DOMParser().parseFromString(text, "text/html").getElementById("main");
        var cur = document.getElementById("main");
        if (next && cur) cur.replaceWith(next);
      })
      .catch(function () {
        var cur = document.getElementById("main");
        if (cur) cur.setAttribute("data-stale", "true");
      })
      .finally(function () { busy = false; });
  }
  setInterval(refresh, ms);
  document.addEventListener("visibilitychange", refresh);
})();
