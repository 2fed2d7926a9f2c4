// The views the key may read, each with the figures of its root (stats?path=/; for a
// forest, the member holding the most files).
import { api, views } from "./api.js";
import { eachLimited, errorBox, h, href, table } from "./dom.js";
import { ago, count, plural, size } from "./format.js";

export function mount(el, ctx) {
  const t = table(["View", "Kind", "Files", "Dirs", "Size", "Latest change", "State"], "view-list");
  el.append(h("section", { class: "panel" }, h("h1", {}, "Views"), t.el));
  const abort = new AbortController();
  const rows = ctx.me.views.map((v) => {
    const cells = Array.from({ length: 5 }, () => h("td", { class: "num" }, "…"));
    const tr = h("tr", { dataset: { view: v.view_id } },
      h("td", { class: "id" }, h("a", { href: href(`/view/${encodeURIComponent(v.view_id)}`) }, v.view_id)),
      h("td", {}, v.driver === "forest-fs" ? "forest" : v.driver), ...cells);
    t.tbody.append(tr);
    return [v, cells];
  });
  eachLimited(rows, 6, async ([v, cells]) => {
    const forest = v.driver === "forest-fs";
    try {
      const s = await api(`${views(v.view_id)}/stats`, { signal: abort.signal,
        params: { path: "/", best: forest ? "file_count" : undefined } });
      const f = forest ? s.members.find((m) => m.fusion_pipe_id === s.best?.fusion_pipe_id) || {} : s;
      cells[0].replaceChildren(count(f.file_count));
      cells[1].replaceChildren(count(f.dir_count));
      cells[2].replaceChildren(size(f.total_size));
      cells[3].replaceChildren(ago(f.latest_mtime));
      cells[3].className = "";
      cells[4].className = "";
      cells[4].replaceChildren(forest ? `${s.members.length} ${plural(s.members.length, "member")}; most files: ${s.best?.fusion_pipe_id ?? "–"}`
        : s.has_blind_spot ? h("span", { class: "warn" }, "has blind spots")
          : s.leader_connected === false ? h("span", { class: "warn" }, "no agent") : "ok");
    } catch (e) {
      if (abort.signal.aborted) return;
      ctx.failed(e);
      cells[0].parentElement.replaceChildren(cells[0].parentElement.cells[0],
        h("td", { colSpan: 6 }, errorBox(e)));
    }
  });
  return () => abort.abort();
}
