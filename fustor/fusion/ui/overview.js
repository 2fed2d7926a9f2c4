// The overview (admin): every agent and view from GET /api/v1/management/dashboard,
// polled every 2 s. Polling, not server-sent events: the dashboard route already answers
// the whole site in one O(views + agents) read, a poll needs no new route or open
// connection per tab, and a failed poll is exactly the "fusion stopped answering" signal
// the stale marker shows. Rows are updated in place, never the whole page.
import * as actions from "./actions.js";
import { api, management } from "./api.js";
import { h, href, syncRows, table } from "./dom.js";
import { ago, count, duration, exactTime, plural, size } from "./format.js";

const POLL_MS = 2000;
const LOG_EVERY = 15; // polls between audit-log reads (it is a file read on the server)

function pipeLine(p) {
  return h("div", { class: "pipe", dataset: { pipe: p.pipe_id } },
    h("span", { class: "name" }, p.pipe_id), " ",
    h("span", { class: `badge ${p.role}` }, p.role), " ",
    h("span", { class: "phase" }, p.phase || p.state || "no status"),
    p.rows_pushed !== null && p.rows_pushed !== undefined ? [" · ", count(p.rows_pushed), " rows"] : "",
    p.rows_per_s ? [" · ", count(Math.round(p.rows_per_s)), "/s"] : "",
    p.lag_s !== null && p.lag_s !== undefined ? [" · lag ", duration(p.lag_s)] : "",
    p.watch_limit_reached ? h("span", { class: "badge warn", title: "the agent hit the " +
      "inotify watch limit: some directories are covered by audits only" }, "watch limit") : "",
    p.last_error ? h("div", { class: "error small", title: p.last_error }, p.last_error) : "");
}

function versionCell(a) {
  const up = a.upgrade;
  const out = [h("span", { class: "version" }, a.version || "?")];
  if (up && up.state === "pending") {
    out.push(h("span", { class: "badge pending", title: `since ${exactTime(up.started_at)}` },
      `→ ${up.target_version}…`));
  } else if (up && up.state === "failed") {
    out.push(h("span", { class: "badge failed", title: up.detail || "" },
      `upgrade to ${up.target_version} failed`));
  } else if (up && up.state === "succeeded") {
    out.push(h("span", { class: "badge ok", title: up.detail || "" }, "upgraded"));
  }
  return h("span", {}, out);
}

function lastCommand(a, now) {
  const c = (a.commands || [])[a.commands.length - 1];
  if (!c) return h("span", { class: "muted" }, "none");
  return h("span", { class: `cmd ${c.state}`, title: c.detail || "" },
    `${c.type}: ${c.state} `, ago(c.finished_at || c.delivered_at || c.created_at, now));
}

function agentActions(tr, after) {
  const a = () => tr.item;
  return h("div", { class: "actions" },
    h("button", { type: "button", onclick: () => actions.agentCommand(a(), "reload_config", after) },
      "Reload config"),
    h("button", { type: "button", onclick: () => actions.agentCommand(a(), "report_status", after) },
      "Report status"),
    h("button", { type: "button", onclick: () => actions.agentCommand(a(), "stop_pipe", after) },
      "Stop pipe…"),
    h("button", { type: "button", onclick: () => actions.upgrade(a(), after) }, "Upgrade…"));
}

// A forest view's figures over its members (the dashboard gives them per member).
function viewFigures(v) {
  if (!v.members) return v;
  const ms = Object.values(v.members);
  const max = (k) => ms.reduce((m, x) => Math.max(m, x[k] || 0), 0) || null;
  const sum = (k) => ms.reduce((s, x) => s + (x[k] || 0), 0);
  return {
    ...v, last_event_at: max("last_event_at"), latest_mtime: max("latest_mtime"),
    ready: ms.length > 0 && ms.every((m) => m.ready),
    leader_connected: ms.some((m) => m.leader_connected),
    is_auditing: ms.some((m) => m.is_auditing), last_audit_finished_at: max("last_audit_finished_at"),
    blind_spot_additions: sum("blind_spot_additions"), blind_spot_deletions: sum("blind_spot_deletions"),
    suspect_count: sum("suspect_count"),
    leader_agent: Object.entries(v.members).map(([p, m]) => `${p}: ${m.leader_agent || "–"}`).join(", "),
  };
}

function snapshotCell(v) {
  if (v.ready) {
    return h("span", { class: "badge ok", title: v.snapshot_completed_at
      ? `first completed ${exactTime(v.snapshot_completed_at)}` : "" }, "complete");
  }
  return v.leader_connected ? h("span", { class: "badge pending" }, "in progress")
    : h("span", { class: "badge warn" }, "no agent");
}

function viewActions(tr, after) {
  const v = () => tr.item;
  if (tr.item.kind !== "fs") return h("span", { class: "muted" }, "–");
  return h("div", { class: "actions" },
    h("button", { type: "button", onclick: () => actions.scanView(v().view_id, "/", after) },
      "Scan path…"));
}

export function mount(el, ctx) {
  const status = h("p", { class: "status", role: "status" }, "loading…");
  let refresh = () => {};
  const after = () => refresh(true);
  const agents = table(["Agent", "Host", "Version", "Up", "Heartbeat", "Pipes", "Last command",
    "Actions"], "agents");
  const viewsT = table(["View", "Kind", "Files", "Dirs", "Size", "Last change", "Snapshot",
    "Audit", "Blind spots", "Suspects", "Leader", "Actions"], "views");
  const log = table(["When", "Key", "Action", "Target", "Outcome"], "log");
  const noLog = h("p", { class: "muted", hidden: true }, "Nothing done through the management API yet.");
  log.el.hidden = true;
  const noAgents = h("p", { class: "muted", hidden: true }, "No agent has connected in the last day.");
  const panel = h("section", { class: "panel overview" },
    h("div", { class: "bar" }, h("h1", {}, "Overview"), status,
      h("button", { type: "button", onclick: () => actions.reloadFusion(after) },
        "Reload fusion config")),
    actions.notices,
    h("h2", {}, "Agents"), agents.el, noAgents,
    h("h2", {}, "Views"), viewsT.el,
    h("h2", {}, "Recent actions"), log.el, noLog);
  el.append(panel);

  let stopped = false;
  let timer = null;
  let polls = 0;
  let lastOk = null;
  let painted = false;
  const abort = new AbortController();

  function render(d) {
    const now = d.generated_at;
    const f = d.fusion;
    status.className = "status";
    panel.dataset.stale = "false";
    status.replaceChildren(`fusion ${f.version} · up `, duration(f.uptime_seconds),
      ` · ${d.agents.length} ${plural(d.agents.length, "agent")} · ${d.views.length} ` +
      `${plural(d.views.length, "view")} · updated `, ago(now));
    noAgents.hidden = d.agents.length > 0;
    syncRows(agents.tbody, d.agents, (a) => a.agent_id, [
      { class: "id", render: (a) => h("span", {}, h("strong", {}, a.agent_id),
        a.connected ? "" : h("span", { class: "badge warn" }, "offline")) },
      { render: (a) => a.host || "–" },
      { class: "version-cell", render: versionCell },
      { class: "num", render: (a) => duration(a.uptime_seconds) },
      { class: "num", render: (a) => a.last_heartbeat_age_s === null ? h("span", { class: "muted" }, "–")
        : h("span", { class: a.last_heartbeat_age_s > 30 ? "late" : "" },
          duration(a.last_heartbeat_age_s), " ago") },
      { class: "pipes", render: (a) => h("div", {}, a.pipes.length ? a.pipes.map(pipeLine)
        : h("span", { class: "muted" }, "no session")) },
      { render: (a) => lastCommand(a, now) },
      { fixed: true, render: (_a, tr) => agentActions(tr, after) },
    ], (a) => ({ class: a.connected ? "" : "offline" }));
    for (const tr of agents.tbody.rows) tr.dataset.agent = tr.dataset.key;
    syncRows(viewsT.tbody, d.views.map(viewFigures), (v) => v.view_id, [
      { class: "id", render: (v) => h("a", { href: href(`/view/${encodeURIComponent(v.view_id)}`) },
        v.view_id) },
      { render: (v) => v.members ? `forest (${Object.keys(v.members).length} members)` : v.kind },
      { class: "num files", render: (v) => count(v.file_count) },
      { class: "num", render: (v) => count(v.dir_count) },
      { class: "num", render: (v) => size(v.total_size) },
      { render: (v) => ago(v.last_event_at, now) },
      { render: snapshotCell },
      { render: (v) => v.is_auditing ? h("span", { class: "badge pending" }, "auditing")
        : v.last_audit_finished_at ? h("span", {}, "last ", ago(v.last_audit_finished_at, now))
          : h("span", { class: "muted" }, "none yet") },
      { class: "num", render: (v) => {
        const n = (v.blind_spot_additions || 0) + (v.blind_spot_deletions || 0);
        return h("span", { class: n ? "warn" : "", title: `${v.blind_spot_additions} added, ` +
          `${v.blind_spot_deletions} deleted, seen only by audits` }, String(n));
      } },
      { class: "num", render: (v) => h("span", { class: v.suspect_count ? "warn" : "" },
        String(v.suspect_count ?? 0)) },
      { render: (v) => v.leader_agent || h("span", { class: "muted" }, "–") },
      { fixed: true, render: (_v, tr) => viewActions(tr, after) },
    ]);
    for (const tr of viewsT.tbody.rows) tr.dataset.view = tr.dataset.key;
    actions.follow(d);
  }

  function stale(err) {
    status.className = "status stale";
    panel.dataset.stale = "true";
    status.replaceChildren(h("strong", {}, "Stale"), " — ",
      lastOk ? ["fusion has not answered since ", ago(lastOk / 1000)] : "fusion has not answered",
      `: ${err.message}`);
  }

  async function readLog() {
    try {
      const r = await api(`${management}/audit-log`, { params: { limit: 10 }, signal: abort.signal });
      noLog.hidden = r.entries.length > 0;
      log.el.hidden = !r.entries.length;
      syncRows(log.tbody, r.entries.slice().reverse(), (e) => e.seq, [
        { render: (e) => ago(e.at) },
        { render: (e) => e.key_id },
        { render: (e) => e.action },
        { render: (e) => e.target || "–" },
        { render: (e) => h("span", { class: e.outcome === "ok" ? "" : "error", title: e.detail || "" },
          e.outcome, e.detail ? ` — ${e.detail}` : "") },
      ]);
    } catch (e) {
      ctx.failed(e);
    }
  }

  let inflight = false;
  async function poll() {
    timer = null;
    if (stopped || inflight) return;
    if (document.hidden) return; // resumed by visibilitychange
    inflight = true;
    const t0 = performance.now();
    try {
      const d = await api(`${management}/dashboard`, { signal: abort.signal, timeoutMs: 5000 });
      if (stopped) return;
      const r0 = performance.now();
      render(d);
      performance.measure("fustor:render", { start: r0, end: performance.now() });
      lastOk = Date.now();
      requestAnimationFrame(() => {
        if (!painted) {
          painted = true;
          performance.mark("fustor:overview-painted");
        } else {
          performance.measure("fustor:refresh", { start: t0, end: performance.now() });
        }
      });
    } catch (e) {
      if (stopped) return;
      if (e.status === 401) {
        inflight = false;
        return ctx.failed(e);
      }
      stale(e);
    }
    inflight = false;
    if (polls++ % LOG_EVERY === 0) readLog();
    if (!stopped && !timer) timer = setTimeout(poll, POLL_MS);
  }

  refresh = (withLog) => {
    if (withLog) readLog();
    if (timer) {
      clearTimeout(timer);
      poll();
    }
  };
  const onVisible = () => { if (!document.hidden && !timer && !inflight) poll(); };
  document.addEventListener("visibilitychange", onVisible);
  poll();
  return () => {
    stopped = true;
    clearTimeout(timer);
    abort.abort();
    document.removeEventListener("visibilitychange", onVisible);
  };
}
