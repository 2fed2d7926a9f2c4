// A forest view (one member tree per pipe): for a path, every member side by side from
// stats?path=P&best=file_count with the complete one (the most files) marked; what one
// member lacks next to another from compare?path=P&members=X,Y (paged with after); and
// the complete member's directory listing with each subdirectory's file count per member.
import { api, views } from "./api.js";
import { breadcrumb, eachLimited, errorBox, fill, h, href, pathText, table } from "./dom.js";
import { ago, count, plural, size } from "./format.js";

const PAGE = 100;

export function mount(el, ctx, viewId, params) {
  const path = params.get("path") || "/";
  const base = `/view/${encodeURIComponent(viewId)}`;
  const link = (p = {}) => href(base, { path, lacking: params.get("lacking"),
    against: params.get("against"), all: params.get("all"), ...p });
  const dirLink = (p) => link({ path: p, after: null, cafter: null });
  const abort = new AbortController();
  const signal = abort.signal;
  const fail = (box) => (e) => {
    if (signal.aborted) return;
    ctx.failed(e);
    fill(box, errorBox(e));
  };

  const membersBox = h("div", { class: "members" }, h("p", { class: "muted" }, "loading…"));
  const compareBox = h("div", { class: "compare" });
  const listBox = h("div", { class: "listing" });
  el.append(h("section", { class: "panel forest" },
    h("div", { class: "bar" }, h("h1", {}, `View ${viewId}`), h("span", { class: "badge" }, "forest")),
    breadcrumb(viewId, path, dirLink),
    h("h2", {}, "Members at this path"), membersBox,
    h("h2", {}, "What a member lacks"), compareBox,
    h("h2", {}, "Contents (of the complete member)"), listBox));

  api(`${views(viewId)}/stats`, { params: { path, best: "file_count" }, signal }).then((s) => {
    const best = s.best?.fusion_pipe_id;
    const t = table(["Member", "Files", "Dirs", "Size", "Latest change", ""], "members");
    for (const m of s.members) {
      const ok = m.status === "ok";
      t.tbody.append(h("tr", { dataset: { member: m.fusion_pipe_id }, class: m.fusion_pipe_id === best ? "best" : "" },
        h("td", { class: "id" }, m.fusion_pipe_id),
        ...(ok ? [h("td", { class: "num files" }, count(m.file_count)), h("td", { class: "num" }, count(m.dir_count)),
          h("td", { class: "num" }, size(m.total_size)), h("td", {}, ago(m.latest_mtime))]
          : [h("td", { colSpan: 4, class: "muted" }, m.message || "not in this member")]),
        h("td", {}, m.fusion_pipe_id === best
          ? h("span", { class: "badge ok complete", title: "the member with the most files here" }, "complete")
          : ok && best ? h("span", { class: "badge warn" }, "partial") : "")));
    }
    fill(membersBox, s.members.length ? t.el : h("p", { class: "muted" }, "No member has sent anything yet."));
    compare(s, best);
  }).catch((e) => { fail(membersBox)(e); fill(compareBox); });

  function compare(s, best) {
    const names = s.members.map((m) => m.fusion_pipe_id);
    if (names.length < 2) {
      return fill(compareBox, h("p", { class: "muted" }, "One member only: nothing to compare."));
    }
    const lacking = names.includes(params.get("lacking")) ? params.get("lacking")
      : names.find((n) => n !== best) || names[0];
    let against = names.includes(params.get("against")) ? params.get("against") : best || names[0];
    if (against === lacking) against = names.find((n) => n !== lacking);
    const all = params.get("all") === "1";
    const cafter = params.get("cafter") || "";
    const pick = (name, value) => h("select", { name, onchange: (ev) => {
      location.hash = link({ [name]: ev.target.value, cafter: null });
    } }, names.map((n) => h("option", { value: n, selected: n === value }, n)));
    const results = h("div", {}, h("p", { class: "muted" }, "comparing…"));
    fill(compareBox, h("div", { class: "controls" },
      h("label", {}, "What does ", pick("lacking", lacking), " lack"),
      h("label", {}, " next to ", pick("against", against), "?"),
      h("label", {}, h("input", { type: "checkbox", checked: all, onchange: (ev) => {
        location.hash = link({ all: ev.target.checked ? "1" : null, cafter: null });
      } }), " also show entries that differ in size or time")), results);
    api(`${views(viewId)}/compare`, { signal, params: { path, members: `${lacking},${against}`,
      limit: PAGE, after: cafter || null } }).then((r) => {
      const rows = r.differences.filter((d) => all ? d.difference !== "subtree"
        : d.missing_in.includes(lacking));
      const t = table(["Path", "What", `Size in ${against}`, `Modified in ${against}`], "lacks");
      const dirs = [];
      for (const d of rows) {
        const there = d.members[against] || d.members[lacking];
        const isDir = there?.content_type === "directory";
        const sizeCell = h("td", { class: "num" }, isDir ? "…" : size(there?.size));
        if (isDir) dirs.push([d.path, sizeCell]);
        const what = d.missing_in.includes(lacking) ? `${lacking} lacks it`
          : d.missing_in.length ? `${d.missing_in.join(", ")} lacks it`
            : `${d.difference} differs`;
        t.tbody.append(h("tr", { dataset: { path: d.path }, class: d.missing_in.includes(lacking) ? "lacks" : "differs" },
          h("td", { class: "name" }, pathText(isDir ? `${d.path}/` : d.path)), h("td", {}, what),
          sizeCell, h("td", {}, ago(there?.modified_time))));
      }
      const pager = h("div", { class: "pager" },
        cafter ? h("a", { class: "button", href: link({ cafter: null }) }, "« First page") : null,
        r.next_after ? h("a", { class: "button", rel: "next", href: link({ cafter: r.next_after }) }, "Next page ›") : null);
      fill(results, rows.length ? t.el : h("p", { class: "ok-text" },
        all ? `No differences between ${lacking} and ${against} here${r.next_after ? " on this page" : ""}.`
          : `${lacking} lacks nothing that ${against} has here${r.next_after ? " on this page" : ""}.`), pager);
      // a missing directory: say how many files it holds (in the member that has it)
      eachLimited(dirs, 6, async ([p, cell]) => {
        const st = await api(`${views(viewId)}/stats`, { params: { path: p }, signal });
        const m = st.members.find((x) => x.fusion_pipe_id === against && x.status === "ok");
        fill(cell, m ? [count(m.file_count), ` ${plural(m.file_count, "file")}, `, size(m.total_size)]
          : "–");
      }).catch(() => {});
    }).catch(fail(results));
  }

  const after = params.get("after") || "";
  api(`${views(viewId)}/tree`, { signal, params: { path, best: "file_count", max_depth: 1, limit: PAGE,
    after: after || null } }).then((r) => {
    const member = r.best_view_selected;
    const node = member && r.members[member]?.data;
    if (!node) return fill(listBox, h("p", { class: "muted" }, r.error || "No member has this path."));
    if (node.content_type !== "directory") {
      return fill(listBox, h("p", {}, `A file of ${size(node.size).textContent}, in ${member}.`));
    }
    const t = table(["Name", "Files per member", "Size", "Latest change"], "entries");
    const dirs = [];
    for (const k of node.children || []) {
      const isDir = k.content_type === "directory";
      const filesCell = h("td", {}, isDir ? "…" : h("span", { class: "muted" }, "–"));
      const sizeCell = h("td", { class: "num" }, isDir ? "…" : size(k.size));
      const timeCell = h("td", {}, ago(k.modified_time));
      if (isDir) dirs.push([k.path, filesCell, sizeCell, timeCell]);
      t.tbody.append(h("tr", { class: isDir ? "dir" : "file", dataset: { name: k.name } },
        h("td", { class: "name" }, isDir ? h("a", { href: dirLink(k.path) }, `${k.name}/`) : k.name),
        filesCell, sizeCell, timeCell));
    }
    const pager = h("div", { class: "pager" },
      after ? h("a", { class: "button", href: link({ after: null }) }, "« First page") : null,
      node.next_after ? h("a", { class: "button", rel: "next", href: link({ after: node.next_after }) }, "Next page ›") : null);
    fill(listBox, (node.children || []).length ? t.el : h("p", { class: "muted" }, "Empty."), pager);
    eachLimited(dirs, 6, async ([p, cell, sizeCell, timeCell]) => {
      const st = await api(`${views(viewId)}/stats`, { params: { path: p }, signal });
      const counts = st.members.map((m) => [m.fusion_pipe_id, m.status === "ok" ? m.file_count : null]);
      const differ = new Set(counts.map((c) => c[1])).size > 1;
      fill(cell, h("span", { class: differ ? "warn" : "" }, counts.map(([n, c], i) =>
        [i ? " · " : "", `${n} `, c === null ? h("span", { class: "muted" }, "none") : count(c)])));
      const mine = st.members.find((m) => m.fusion_pipe_id === member && m.status === "ok");
      fill(sizeCell, mine ? size(mine.total_size) : "–");
      fill(timeCell, mine ? ago(mine.latest_mtime) : "–");
    }).catch(() => {});
  }).catch(fail(listBox));

  return () => abort.abort();
}
