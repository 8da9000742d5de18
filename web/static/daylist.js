// Live updates of the day list (web/templates/worklist.html), without reloading:
// every few seconds the page asks /worklist/changes whether its list changed (one
// small JSON answer); only then it fetches itself and swaps the results region.
// The filter form, what is typed in it and the scroll position stay; ticked rows
// stay ticked; a polite live region tells screen readers. Served from /static, so
// the strict Content-Security-Policy (no inline script) holds.
(function () {
  "use strict";

  var region = document.getElementById("daylist-results");
  var live = document.getElementById("live-status");
  if (!region) {
    return;
  }

  function addSelectAll() {
    var head = region.querySelector("th.select");
    if (!head || head.querySelector("input")) {
      return;
    }
    var all = document.createElement("input");
    all.type = "checkbox";
    all.id = "select-all";
    all.setAttribute("aria-label", head.getAttribute("data-all-label") || "");
    all.addEventListener("change", function () {
      region.querySelectorAll('input[name="step"]').forEach(function (box) {
        box.checked = all.checked;
      });
    });
    head.appendChild(all);
  }

  function checkedKeys() {
    var keys = {};
    region.querySelectorAll('input[name="step"]:checked').forEach(function (box) {
      keys[box.value] = true;
    });
    return keys;
  }

  function swap(fresh) {
    var keys = checkedKeys();
    var allChecked = !!(document.getElementById("select-all") || {}).checked;
    var focused = document.activeElement;
    var focusedId = focused && region.contains(focused) ? focused.id : "";
    var x = window.scrollX;
    var y = window.scrollY;
    var nodes = [];
    fresh.childNodes.forEach(function (node) {
      nodes.push(document.importNode(node, true));
    });
    region.replaceChildren.apply(region, nodes);
    ["version", "total", "changesUrl", "pollSeconds"].forEach(function (name) {
      region.dataset[name] = fresh.dataset[name];
    });
    addSelectAll();
    region.querySelectorAll('input[name="step"]').forEach(function (box) {
      box.checked = !!keys[box.value];
    });
    var all = document.getElementById("select-all");
    if (all) {
      all.checked = allChecked;
    }
    if (focusedId) {
      var again = document.getElementById(focusedId);
      if (again) {
        again.focus({ preventScroll: true });
      }
    }
    window.scrollTo(x, y);
    if (live) {
      var text = region.dataset.updatedText || fresh.dataset.updatedText || "";
      live.textContent = text.replace("{num}", region.dataset.total || "");
    }
  }

  function reload() {
    return fetch(window.location.href, { credentials: "same-origin" })
      .then(function (response) {
        return response.ok ? response.text() : "";
      })
      .then(function (text) {
        if (!text) {
          return;
        }
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.getElementById("daylist-results");
        if (fresh) {
          swap(fresh);
        }
      });
  }

  function poll() {
    var seconds = parseInt(region.dataset.pollSeconds || "0", 10);
    if (!seconds) {
      return;
    }
    window.setTimeout(check, seconds * 1000);
  }

  function check() {
    if (document.hidden) {
      poll();
      return;
    }
    var url = region.dataset.changesUrl;
    url += (url.indexOf("?") < 0 ? "?" : "&") + "since=" + encodeURIComponent(region.dataset.version);
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        var json = response.headers.get("Content-Type") || "";
        return response.ok && json.indexOf("application/json") === 0 ? response.json() : null;
      })
      .then(function (answer) {
        if (answer && answer.changed) {
          return reload();
        }
        return null;
      })
      .catch(function () {
        // A network hiccup or a restart: the next poll tries again.
      })
      .then(poll);
  }

  addSelectAll();
  poll();
})();
