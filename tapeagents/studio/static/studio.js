// The studio's few behaviours: load an LLM call when its step is expanded, show new steps
// while an agent runs (server-sent events), check JSON while a step is edited, and enable
// "compare" once two tapes are picked. Every HTML fragment comes from the server, escaped there,
// and a fetched one is inserted only when the server marked it as an LLM call's fragment.
(function () {
  "use strict";

  function wireCalls(root) {
    root.querySelectorAll("details[data-call-src]").forEach(function (details) {
      if (details.dataset.wired) return;
      details.dataset.wired = "1";
      details.addEventListener("toggle", function () {
        if (!details.open || details.dataset.loaded) return;
        details.dataset.loaded = "1";
        var body = details.querySelector(".call-body");
        fetch(details.dataset.callSrc, { credentials: "same-origin" })
          .then(function (response) {
            if (!response.ok) throw new Error(response.status + " " + response.statusText);
            // only the studio's own call fragment becomes markup, whatever the address reached
            if (response.headers.get("x-studio-fragment") !== "call") {
              throw new Error("the answer is not an LLM call");
            }
            return response.text();
          })
          .then(function (html) {
            body.innerHTML = html;
            details.dataset.ready = "1";
          })
          .catch(function (error) {
            delete details.dataset.loaded;
            body.textContent = "Could not load the LLM call: " + error.message;
          });
      });
    });
  }

  function followRun(steps) {
    var source = new EventSource(steps.dataset.liveSrc);
    var count = document.getElementById("step-count");
    source.addEventListener("step", function (event) {
      var data = JSON.parse(event.data);
      if (document.getElementById("step-" + data.index)) return;
      var empty = document.getElementById("no-steps");
      if (empty) empty.remove();
      steps.insertAdjacentHTML("beforeend", data.html);
      var card = document.getElementById("step-" + data.index);
      if (card) {
        card.classList.add("fresh");
        wireCalls(card);
      }
      if (count) count.textContent = String(data.index + 1);
    });
    source.addEventListener("end", function (event) {
      source.close();
      var data = JSON.parse(event.data);
      var status = document.querySelector("#tape-status .status");
      if (status) {
        status.textContent = data.status;
        status.className = "status st-" + data.status;
      }
      var live = document.getElementById("live");
      if (live) live.remove();
      var end = document.getElementById("run-end");
      if (end) {
        end.hidden = false;
        end.className = "run-end flash " + (data.error ? "flash-error" : "flash-ok");
        end.textContent = data.error
          ? "The run ended with an error: " + data.error + " "
          : "The run finished: " + data.status + ". ";
        var reload = document.createElement("a");
        reload.href = location.pathname;
        reload.textContent = "Reload for the totals and lineage";
        end.appendChild(reload);
      }
      document.querySelectorAll("#resume button[type=submit]").forEach(function (b) {
        b.disabled = false;
      });
    });
    source.onerror = function () {
      if (source.readyState === EventSource.CLOSED) return;
    };
  }

  function wireJsonCheck() {
    document.querySelectorAll("textarea[data-json-check]").forEach(function (area) {
      var out = document.getElementById(area.dataset.jsonCheck);
      if (!out) return;
      var check = function () {
        try {
          JSON.parse(area.value);
          out.textContent = "valid JSON";
          out.className = "json-status good";
        } catch (error) {
          out.textContent = error.message;
          out.className = "json-status bad";
        }
      };
      area.addEventListener("input", check);
      check();
    });
  }

  function wireCompare() {
    var button = document.getElementById("compare");
    if (!button) return;
    var boxes = document.querySelectorAll("input[type=checkbox][name=t]");
    var update = function () {
      var picked = Array.prototype.filter.call(boxes, function (b) { return b.checked; });
      button.disabled = picked.length !== 2;
    };
    boxes.forEach(function (b) { b.addEventListener("change", update); });
    update();
  }

  // j / k: next / previous step; o: open or close the prompt of the current step
  function wireKeys() {
    var steps = document.getElementById("steps");
    if (!steps) return;
    document.addEventListener("keydown", function (event) {
      if (event.ctrlKey || event.metaKey || event.altKey) return;
      var target = event.target;
      if (target && /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName)) return;
      var cards = steps.querySelectorAll(".step");
      if (!cards.length) return;
      var current = location.hash ? document.getElementById(location.hash.slice(1)) : null;
      var index = current ? Array.prototype.indexOf.call(cards, current) : -1;
      if (event.key === "j" || event.key === "k") {
        var next = event.key === "j" ? index + 1 : index - 1;
        next = Math.max(0, Math.min(cards.length - 1, next));
        location.hash = "#" + cards[next].id;
        event.preventDefault();
      } else if (event.key === "o" && index >= 0) {
        var call = current.querySelector("details.call");
        if (call) call.open = !call.open;
        event.preventDefault();
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    wireKeys();
    wireCalls(document);
    wireJsonCheck();
    wireCompare();
    var steps = document.querySelector("[data-live-src]");
    if (steps) followRun(steps);
  });
})();
