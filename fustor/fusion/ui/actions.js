// What an admin can do from the page: commands and upgrades for agents, an on-demand
// scan of a view's path, a fusion reload. Each asks first, then shows its outcome as a
// notice that follows the action to its end (fusion records each in its audit log).
import { api, management, views } from "./api.js";
import { fill, h } from "./dom.js";

const dialog = document.getElementById("dialog");

// Ask before acting. Resolves to the form's values, or null when cancelled.
export function ask({ title, text, fields = [], confirm = "Confirm", danger = false }) {
  return new Promise((resolve) => {
    const inputs = {};
    let answered = false;
    const done = (values) => {
      if (answered) return;
      answered = true;
      if (dialog.open) dialog.close();
      resolve(values);
    };
    const rows = fields.map((f) => {
      const id = `field-${f.name}`;
      const input = f.options
        ? h("select", { id, name: f.name }, f.options.map((o) => h("option", { value: o }, o)))
        : h("input", { id, name: f.name, type: f.type || "text", value: f.value ?? "",
          placeholder: f.placeholder || "", required: !!f.required, autocomplete: "off",
          spellcheck: false });
      inputs[f.name] = input;
      return h("div", { class: "field" }, h("label", { htmlFor: id }, f.label), input,
        f.help ? h("small", { class: "muted" }, f.help) : null);
    });
    const form = h("form", { onsubmit: (ev) => {
      ev.preventDefault();
      const values = {};
      for (const [k, input] of Object.entries(inputs)) values[k] = input.value.trim();
      done(values);
    } },
    h("h2", {}, title), text ? h("p", {}, text) : null, rows,
    h("div", { class: "buttons" },
      h("button", { type: "button", onclick: () => done(null) }, "Cancel"),
      h("button", { type: "submit", class: danger ? "danger" : "primary" }, confirm)));
    fill(dialog, form);
    dialog.onclose = () => done(null);
    dialog.showModal();
    (Object.values(inputs)[0] || form.querySelector("button.primary, button.danger")).focus();
  });
}

// -- notices: the outcome of each action, kept up to date --------------------------------
// one list for the whole visit, so an outcome is still there after browsing elsewhere
export const notices = h("ul", { class: "notices", "aria-live": "polite" });
const commands = new Map(); // command_id -> notice, until the command ends
const upgrades = new Map(); // command_id of an upgrade -> notice

export function forget() { // on sign-out: another key's outcomes are not this one's
  notices.replaceChildren();
  commands.clear();
  upgrades.clear();
}

function notice(title) {
  const state = h("span", { class: "state" });
  const text = h("span", { class: "text" });
  const el = h("li", { class: "notice pending", role: "status" },
    h("strong", {}, title), " ", state, " ", text,
    h("button", { type: "button", class: "close", title: "dismiss",
      onclick: () => el.remove() }, "×"));
  notices.prepend(el);
  return {
    el,
    set(s, detail = "", kind = "pending") {
      state.textContent = s;
      text.textContent = detail;
      el.className = `notice ${kind}`;
      el.dataset.state = s;
    },
  };
}

function failedNotice(n, err) {
  n.set("failed", err.message, "failed");
}

const FINAL = { done: "ok", failed: "failed", lost: "failed" };

// Called with each dashboard answer: move every followed command and upgrade along.
export function follow(dashboard) {
  for (const a of dashboard.agents) {
    for (const c of a.commands || []) {
      const n = commands.get(c.command_id);
      if (!n) continue;
      if (c.state === "queued") n.set("queued", "waiting for the agent's next heartbeat");
      else if (c.state === "delivered") n.set("delivered", "waiting for the agent's result");
      else {
        n.set(c.state, c.detail || "", FINAL[c.state] || "pending");
        commands.delete(c.command_id);
      }
    }
    const up = a.upgrade;
    const n = up && upgrades.get(up.command_id);
    if (n) {
      if (up.state === "pending") {
        n.set("pending", `installing and verifying ${up.target_version}` +
          (a.version ? ` (the agent runs ${a.version})` : ""));
      } else {
        n.set(up.state, up.detail || "", up.state === "succeeded" ? "ok" : "failed");
        upgrades.delete(up.command_id);
      }
    }
  }
}

// -- the actions -------------------------------------------------------------------------
const LABELS = {
  reload_config: "Reload config",
  report_status: "Report status",
  stop_pipe: "Stop pipe",
};

export async function agentCommand(agent, type, after) {
  let body = { type };
  if (type === "stop_pipe") {
    const pipes = (agent.pipes || []).map((p) => p.pipe_id);
    if (!pipes.length) return;
    const v = await ask({ title: `Stop a pipe of ${agent.agent_id}`, confirm: "Stop pipe",
      danger: true, text: "The agent stops that pipe (its session ends); its other pipes " +
        "go on. Starting it again takes an agent reload or restart.",
      fields: [{ name: "pipe_id", label: "Pipe", options: pipes }] });
    if (!v) return;
    body = { type, pipe_id: v.pipe_id };
  } else {
    const what = type === "reload_config"
      ? "The agent re-reads its config files and applies the changes."
      : "The agent reports its status with its next heartbeat.";
    if (!await ask({ title: `${LABELS[type]}: ${agent.agent_id}`, text: what,
      confirm: LABELS[type] })) return;
  }
  const n = notice(`${LABELS[type]} (${agent.agent_id}${body.pipe_id ? ` / ${body.pipe_id}` : ""})`);
  n.set("sending");
  try {
    const r = await api(`${management}/agents/${encodeURIComponent(agent.agent_id)}/command`,
      { method: "POST", body });
    n.set("queued", `on ${r.sessions_queued} session(s); waiting for the agent's next heartbeat`);
    commands.set(r.command_id, n);
  } catch (e) {
    failedNotice(n, e);
  }
  after?.();
}

export async function upgrade(agent, after) {
  const v = await ask({ title: `Upgrade ${agent.agent_id}`, confirm: "Upgrade",
    text: `The agent installs that fustor version, checks it in a fresh interpreter and ` +
      `restarts into it; a failed check rolls back. It runs ${agent.version || "an unknown version"} now.`,
    fields: [
      { name: "version", label: "Version", placeholder: "e.g. 0.2.0", required: true },
      { name: "index_url", label: "Package index URL (optional)",
        placeholder: "the agent's pip default" },
      { name: "find_links", label: "Find links (optional)", placeholder: "a directory or URL of wheels" },
      { name: "timeout_s", label: "Install timeout, seconds", type: "number", value: "300" },
    ] });
  if (!v) return;
  const n = notice(`Upgrade ${agent.agent_id} to ${v.version}`);
  n.set("sending");
  const body = { version: v.version, timeout_s: Number(v.timeout_s) || 300 };
  if (v.index_url) body.index_url = v.index_url;
  if (v.find_links) body.find_links = v.find_links;
  try {
    const r = await api(`${management}/agents/${encodeURIComponent(agent.agent_id)}/upgrade`,
      { method: "POST", body });
    n.set("pending", `queued on ${r.sessions_queued} session(s)`);
    upgrades.set(r.command_id, n);
  } catch (e) {
    failedNotice(n, e);
  }
  after?.();
}

export async function scanView(viewId, path = "/", after) {
  const v = await ask({ title: `Scan a path of view ${viewId}`, confirm: "Scan",
    text: "Every agent feeding the view walks the path now and sends what it finds.",
    fields: [{ name: "path", label: "Path in the view", value: path, required: true }] });
  if (!v) return;
  const n = notice(`Scan ${v.path} (${viewId})`);
  n.set("sending");
  try {
    const r = await api(`${views(viewId)}/tree`,
      { params: { path: v.path, on_demand_scan: "true", max_depth: 0 } });
    after?.();
    if (!r.job_id) return n.set("done", "no agent feeds this view now", "failed");
    n.set("running", `job ${r.job_id}`);
    const end = Date.now() + 10 * 60 * 1000;
    while (Date.now() < end && n.el.isConnected) {
      await new Promise((ok) => setTimeout(ok, 1000));
      const job = await api(`${views(viewId)}/jobs/${encodeURIComponent(r.job_id)}`);
      const p = job.progress;
      if (job.status === "COMPLETED") {
        return n.set("completed", `job ${r.job_id}: ${p.completed_pipes} of ${p.total_pipes} pipe(s)`, "ok");
      }
      n.set("running", `job ${r.job_id}: ${p.completed_pipes} of ${p.total_pipes} pipe(s) done`);
    }
  } catch (e) {
    failedNotice(n, e);
    after?.();
  }
}

export async function reloadFusion(after) {
  if (!await ask({ title: "Reload fusion's config", confirm: "Reload",
    text: "Fusion re-reads its config files and applies added, removed and changed views, " +
      "pipes and receivers, keeping sessions and data. A config with an error is refused " +
      "and the running one stays." })) return;
  const n = notice("Reload fusion config");
  n.set("sending");
  try {
    const r = await api(`${management}/reload`, { method: "POST" });
    const parts = Object.entries(r.diff || {}).filter(([, v]) => v && v.length)
      .map(([k, v]) => `${k.replaceAll("_", " ")}: ${v.join(", ")}`);
    n.set("reloaded", parts.length ? parts.join("; ") : "no change", "ok");
  } catch (e) {
    n.set("refused", e.message, "failed");
  }
  after?.();
}
