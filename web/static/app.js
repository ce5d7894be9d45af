// atmfleet web console: live refresh of the wall and SLA countdowns. No framework.
"use strict";
(function () {
  const $ = (sel, root) => (root || document).querySelector(sel);
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));

  // ---- the wall: GET its JSON every few seconds and update counts, tiles and devices in place.
  function wall() {
    const el = $("#wall");
    if (!el) return;
    const names = JSON.parse(($("#state-names") || {}).textContent || "{}");
    const every = Math.max(1, Math.min(10, parseFloat(el.dataset.refresh || "5"))) * 1000;
    async function tick() {
      try {
        const r = await fetch(el.dataset.api, {credentials: "same-origin", headers: {Accept: "application/json"}});
        if (!r.ok) return;
        const data = await r.json();
        $("#wall-total").textContent = data.total;
        if (data.as_of) $("#wall-asof").textContent = new Date(data.as_of).toLocaleString(document.body.dataset.lang);
        const counts = $("#wall-counts");
        if (counts) {
          counts.innerHTML = Object.keys(names).filter((s) => data.counts[s]).map((s) =>
            `<li class="st-${esc(s)}" data-state="${esc(s)}"><a href="/wall?state=${esc(s)}">${esc(names[s])} <b>${data.counts[s]}</b></a></li>`).join("");
        }
        for (const g of data.tiles) {
          const tile = document.querySelector(`#wall-tiles .tile[data-id="${CSS.escape(g.id)}"]`);
          if (!tile) continue;
          tile.className = "tile st-" + g.worst;
          tile.querySelector(".n").textContent = g.total;
        }
        for (const d of data.devices) {
          const tile = document.querySelector(`#wall-devices .dev[data-id="${CSS.escape(d.id)}"]`);
          if (!tile) continue;
          tile.className = "dev st-" + d.state;
          tile.querySelector(".dstate").textContent = names[d.state] || d.state;
        }
        el.dataset.updated = String(Date.now());
      } catch (e) { /* the next tick tries again */ }
    }
    setInterval(tick, every);
  }

  // ---- SLA countdowns (and ages where no deadline is known).
  function countdowns() {
    const items = document.querySelectorAll(".countdown");
    if (!items.length) return;
    const fmt = (ms) => {
      const s = Math.floor(Math.abs(ms) / 1000), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
      return `${h}:${String(m).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}`;
    };
    function tick() {
      const now = Date.now();
      for (const el of items) {
        if (el.dataset.due) {
          const left = Date.parse(el.dataset.due) - now;
          el.textContent = left >= 0 ? fmt(left) : `${el.dataset.overdue} ${fmt(left)}`;
          el.classList.toggle("late", left < 0);
        } else if (el.dataset.since) {
          el.textContent = "+" + fmt(now - Date.parse(el.dataset.since));
        }
      }
    }
    tick();
    setInterval(tick, 1000);
  }

  // ---- the board refreshes itself (a reload of the table only) while nobody is typing.
  function board() {
    const el = $("#board");
    if (!el) return;
    const every = Math.max(1, Math.min(10, parseFloat(el.dataset.refresh || "5"))) * 1000;
    setInterval(async () => {
      if (document.activeElement && document.activeElement.tagName === "INPUT") return;
      try {
        const r = await fetch(location.href, {credentials: "same-origin"});
        if (!r.ok) return;
        const doc = new DOMParser().parseFromString(await r.text(), "text/html");
        const fresh = doc.querySelector("#board");
        if (fresh) { el.innerHTML = fresh.innerHTML; countdowns(); el.dataset.updated = String(Date.now()); }
      } catch (e) { /* next time */ }
    }, every);
  }

  // ---- a command's page: ask for its state until it is final (done, failed, rejected, expired).
  function command() {
    const el = $("#command");
    if (!el || el.dataset.final === "1") return;
    const labels = JSON.parse(($("#cmd-labels") || {}).textContent || "{}");
    const every = Math.max(200, parseInt(el.dataset.poll || "1000", 10));
    const local = (iso) => iso ? new Date(iso).toLocaleString(document.body.dataset.lang === "en" ? "en-GB" : "zh-CN", {hour12: false}) : "–";
    async function tick() {
      try {
        const r = await fetch(el.dataset.api, {credentials: "same-origin", headers: {Accept: "application/json"}});
        if (r.ok) {
          const c = await r.json();
          const badge = $("#cmd-state");
          badge.className = "badge cmd-" + c.state;
          badge.dataset.state = c.state;
          badge.textContent = labels.state[c.state] || c.state;
          const rows = c.history.map((e) => `<tr><td>${esc(local(e.at))}</td><td>${esc(labels.state[e.state] || e.state)}</td><td>${esc(e.source)}</td><td>${e.detail ? esc(JSON.stringify(e.detail)) : ""}</td></tr>`);
          const table = $("#cmd-history");
          table.innerHTML = table.rows[0].outerHTML + rows.join("");
          $("#cmd-reason").textContent = c.reason ? `${labels.reason}: ${c.reason}` : "";
          if (c.journal_bytes !== null && labels.journal) {
            $("#cmd-journal").innerHTML = `<a href="/commands/${encodeURIComponent(c.id)}/journal">${esc(labels.download)} (${c.journal_bytes} B)</a>`;
          }
          el.dataset.updated = String(Date.now());
          if (c.final) { el.dataset.final = "1"; $("#cmd-waiting").hidden = true; return; }
        }
      } catch (e) { /* the next tick tries again */ }
      setTimeout(tick, every);
    }
    setTimeout(tick, every);
  }

  document.addEventListener("DOMContentLoaded", () => { wall(); countdowns(); board(); command(); });
})();
