// Browsing an fs view: one directory at a time from tree?max_depth=1 (paged with
// limit/after), each subdirectory's file count, size and latest change from
// stats?path= (one O(1) aggregate read each, only for the rows on screen, six at a time),
// a breadcrumb, search (paged), and each entry's suspect and blind-spot marks.
import * as actions from "./actions.js";
import { api, views } from "./api.js";
import { breadcrumb, eachLimited, errorBox, fill, h, href, parentOf, pathText, table } from "./dom.js";
import { ago, count, plural, size } from "./format.js";

const PAGE_SIZES = [50, 100, 500];
const SEARCH_PAGE = 50;
const MARKS_TTL_MS = 30000;

// Blind spots and suspects of a view (whole-view lists): read once, kept 30 s, and turned
// into per-path marks and per-directory counts of marked entries below it.
const markCache = new Map();

async function marksOf(viewId, signal, fresh = false) {
  const hit = markCache.get(viewId);
  if (hit && !fresh && Date.now() - hit.at < MARKS_TTL_MS) return hit;
  const [blind, suspects] = await Promise.all([
    api(`${views(viewId)}/blind-spots`, { signal }),
    api(`${views(viewId)}/suspect-list`, { signal }),
  ]);
  const m = { at: Date.now(), blind: new Set(), suspect: new Set(), below: new Map(),
    blindAdded: blind.additions_count, blindDeleted: blind.deletion_count };
  const under = (path, kind) => {
    for (let p = parentOf(path); ; p = parentOf(p)) {
      const c = m.below.get(p) || { blind: 0, suspect: 0 };
      c[kind]++;
      m.below.set(p, c);
      if (p === "/") break;
    }
  };
  for (const n of blind.additions) { m.blind.add(n.path); under(n.path, "blind"); }
  for (const p of blind.deletions) { m.blind.add(p); under(p, "blind"); }
  for (const s of suspects) { m.suspect.add(s.path); under(s.path, "suspect"); }
  markCache.set(viewId, m);
  return m;
}

export function marksCell(node, marks) {
  const out = [];
  if (node.integrity_suspect || marks?.suspect.has(node.path)) {
    out.push(h("span", { class: "badge warn", title: "suspect: the file may still be being " +
      "written (it changed recently); its size can still change" }, "suspect"));
  }
  if (marks?.blind.has(node.path)) {
    out.push(h("span", { class: "badge blind", title: "blind spot: seen only by an audit, " +
      "not by the agent's realtime events" }, "blind spot"));
  }
  const below = node.content_type === "directory" && marks?.below.get(node.path);
  if (below?.suspect) {
    out.push(h("span", { class: "badge warn light", title: "suspect files below this directory" },
      `${below.suspect} suspect below`));
  }
  if (below?.blind) {
    out.push(h("span", { class: "badge blind light", title: "blind-spot entries below this directory" },
      `${below.blind} blind below`));
  }
  return h("span", { class: "marks" }, out);
}

export function mount(el, ctx, viewId, params) {
  const path = params.get("path") || "/";
  const after = params.get("after") || "";
  const limit = PAGE_SIZES.includes(Number(params.get("limit"))) ? Number(params.get("limit")) : 100;
  const sort = params.get("sort") === "size" ? "size" : "name";
  const q = params.get("q") || "";
  const qpage = Math.max(0, Number.parseInt(params.get("qpage") || "0", 10) || 0);
  const qafter = params.get("qafter") || "";
  const base = `/view/${encodeURIComponent(viewId)}`;
  const link = (p = {}) => href(base, { path, limit: limit !== 100 ? limit : null,
    sort: sort !== "name" ? sort : null, ...p });
  const dirLink = (p) => link({ path: p, after: null });
  const go = (p) => { location.hash = link(p); };
  const abort = new AbortController();
  const signal = abort.signal;

  const summary = h("div", { class: "summary" }, "…");
  const body = h("div", { class: "listing" }, h("p", { class: "muted" }, "loading…"));
  const searchInput = h("input", { type: "search", name: "q", value: q, autocomplete: "off",
    spellcheck: false, placeholder: "*.bam, a name, or part of one", "aria-label": "search" });
  const tools = [h("button", { type: "button", title: "read again (also the marks)",
    onclick: () => { markCache.delete(viewId); window.dispatchEvent(new HashChangeEvent("hashchange")); } },
  "↻ Refresh")];
  if (ctx.me.admin) {
    tools.push(h("button", { type: "button", onclick: () => actions.scanView(viewId, path) },
      "Scan this path…"));
  }
  el.append(h("section", { class: "panel browse" },
    h("div", { class: "bar" }, h("h1", {}, `View ${viewId}`), h("div", { class: "tools" }, tools)),
    actions.notices,
    breadcrumb(viewId, path, dirLink), summary,
    h("form", { class: "search", role: "search", onsubmit: (ev) => {
      ev.preventDefault();
      go({ q: searchInput.value.trim() || null, qpage: null, qafter: null, after: null });
    } }, searchInput, h("button", { type: "submit" }, "Search"),
    q ? h("a", { href: link({ q: null, qpage: null, qafter: null }) }, "clear") : null,
    h("small", { class: "muted" }, ` under ${path}`)),
    body));

  api(`${views(viewId)}/stats`, { params: { path }, signal }).then((s) => {
    fill(summary, count(s.file_count), " files · ",
      h("span", { title: `dir_count ${s.dir_count} counts this directory too` },
        count(Math.max(0, s.dir_count - 1)), " subdirectories"), " · ",
      size(s.total_size), " · latest change ", ago(s.latest_mtime),
      s.snapshot_completed_at || s.snapshot_complete ? ""
        : h("span", { class: "badge pending" }, "snapshot in progress"),
      s.has_blind_spot ? h("span", { class: "badge blind", title: "in the whole view" }, (() => {
        const n = s.blind_spot_additions + s.blind_spot_deletions;
        return `${n} blind ${plural(n, "spot")}`;
      })()) : "",
      s.suspect_file_count ? h("span", { class: "badge warn", title: "in the whole view" },
        `${s.suspect_file_count} ${plural(s.suspect_file_count, "suspect")}`) : "");
  }).catch((e) => { if (!signal.aborted) { ctx.failed(e); fill(summary, errorBox(e)); } });

  const marks = marksOf(viewId, signal).catch(() => null); // marks are extra: never block
  (q ? search(body) : listing(body)).catch((e) => {
    if (signal.aborted) return;
    ctx.failed(e);
    fill(body, errorBox(e));
  });

  async function listing(box) {
    const node = await api(`${views(viewId)}/tree`, { signal,
      params: { path, max_depth: 1, limit, after: after || null } });
    const m = await marks;
    if (node.content_type !== "directory") {
      const t = table(["File", "Size", "Modified", "Marks"], "entries");
      t.tbody.append(h("tr", {}, h("td", {}, node.name), h("td", { class: "num" }, size(node.size)),
        h("td", {}, ago(node.modified_time)), h("td", {}, marksCell(node, m))));
      return fill(box, t.el);
    }
    const kids = node.children || [];
    const dirs = kids.filter((k) => k.content_type === "directory");
    const figures = new Map(); // path -> stats of that directory
    const cells = new Map(); // path -> [files, size, latest] cells
    const load = () => eachLimited(dirs, 6, async (d) => {
      try {
        const s = await api(`${views(viewId)}/stats`, { params: { path: d.path }, signal });
        figures.set(d.path, s);
        const c = cells.get(d.path);
        if (c) {
          c[0].replaceChildren(count(s.file_count));
          c[1].replaceChildren(size(s.total_size));
          c[2].replaceChildren(ago(s.latest_mtime));
        }
      } catch (e) {
        if (!signal.aborted) cells.get(d.path)?.[0].replaceChildren(h("span", { class: "error", title: e.message }, "!"));
      }
    });
    let rows = kids;
    if (sort === "size") { // only this page: the API lists children by name
      await load();
      const weight = (k) => k.content_type === "directory" ? figures.get(k.path)?.total_size ?? -1 : k.size;
      rows = kids.slice().sort((a, b) => weight(b) - weight(a) || (a.name < b.name ? -1 : 1));
    }
    const t = table(["Name", "Files", "Size", "Latest change", "Marks"], "entries");
    for (const k of rows) {
      const isDir = k.content_type === "directory";
      const c = isDir ? [h("td", { class: "num" }, "…"), h("td", { class: "num" }, "…"), h("td", {}, "…")]
        : [h("td", { class: "num" }, h("span", { class: "muted" }, "–")), h("td", { class: "num" }, size(k.size)),
          h("td", {}, ago(k.modified_time))];
      if (isDir) cells.set(k.path, c);
      const s = figures.get(k.path);
      if (s) {
        c[0].replaceChildren(count(s.file_count));
        c[1].replaceChildren(size(s.total_size));
        c[2].replaceChildren(ago(s.latest_mtime));
      }
      t.tbody.append(h("tr", { class: isDir ? "dir" : "file", dataset: { name: k.name } },
        h("td", { class: "name" }, isDir ? h("a", { href: dirLink(k.path) }, `${k.name}/`) : k.name),
        ...c, h("td", {}, marksCell(k, m))));
    }
    const controls = h("div", { class: "controls" },
      h("label", {}, "Sort this page by ", h("select", { name: "sort", onchange: (ev) => go({ sort: ev.target.value }) },
        h("option", { value: "name", selected: sort === "name" }, "name"),
        h("option", { value: "size", selected: sort === "size" }, "size (largest first)"))),
      h("label", {}, "Per page ", h("select", { name: "limit", onchange: (ev) => go({ limit: ev.target.value, after: null }) },
        PAGE_SIZES.map((n) => h("option", { value: n, selected: n === limit }, String(n))))));
    const pager = h("div", { class: "pager" },
      after ? h("a", { href: link({ after: null }), class: "button" }, "« First page") : null,
      after ? h("span", { class: "muted" }, `from “${after}”`) : null,
      node.next_after ? h("a", { href: link({ after: node.next_after }), class: "button", rel: "next" }, "Next page ›") : null);
    fill(box, controls, kids.length ? t.el : h("p", { class: "muted" }, "This directory is empty."), pager);
    if (sort !== "size") await load();
  }

  async function search(box) {
    // pages of the name index: `qafter` is the cursor fusion gave (next_after), `qpage` only numbers them
    const found = await api(`${views(viewId)}/search`, { signal,
      params: { pattern: q, path, limit: SEARCH_PAGE, after: qafter || null } });
    const m = await marks;
    const page = found.results;
    const t = table(["Path", "Size", "Modified", "Marks"], "results");
    for (const n of page) {
      t.tbody.append(h("tr", { dataset: { path: n.path } },
        h("td", { class: "name" }, h("a", { href: link({ path: parentOf(n.path), q: null, qpage: null, qafter: null }),
          title: "open its directory" }, pathText(n.path))),
        h("td", { class: "num" }, size(n.size)), h("td", {}, ago(n.modified_time)),
        h("td", {}, marksCell(n, m))));
    }
    const first = qpage * SEARCH_PAGE + 1;
    const pager = h("div", { class: "pager" },
      qafter ? h("a", { href: link({ q, qpage: null, qafter: null }), class: "button" }, "« First results") : null,
      page.length ? h("span", { class: "muted" }, `results ${first}–${first + page.length - 1}`) : null,
      found.next_after ? h("a", { href: link({ q, qpage: qpage + 1, qafter: found.next_after }), class: "button", rel: "next" }, "Next ›") : null);
    fill(box, h("h2", {}, `Search “${q}” under ${path}`),
      page.length ? t.el : h("p", { class: "muted" }, "Nothing found."), pager);
  }

  return () => abort.abort();
}
