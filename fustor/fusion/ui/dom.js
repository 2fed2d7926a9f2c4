// Building the page's elements. Text always goes in as text nodes (never as HTML): paths
// and error messages come from file systems and servers, not from us.

export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k in el && k !== "list") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

// A table body kept in step with a list of items, one row per key. Cells are rebuilt only
// when what they show changed, and "fixed" cells (buttons) never are, so a click is not
// lost to a refresh that replaced the button under the pointer.
export function syncRows(tbody, items, keyOf, columns, rowProps = () => ({})) {
  const old = new Map();
  for (const tr of tbody.rows) old.set(tr.dataset.key, tr);
  const rows = [];
  for (const item of items) {
    const key = String(keyOf(item));
    let tr = old.get(key);
    old.delete(key);
    if (!tr) {
      tr = h("tr", { dataset: { key } });
      tr._shown = columns.map(() => null);
      for (const col of columns) tr.append(h("td", { class: col.class || "" }));
    }
    tr.item = item;
    const props = rowProps(item);
    tr.className = props.class || "";
    columns.forEach((col, i) => {
      const td = tr.cells[i];
      if (col.fixed) {
        if (!td.firstChild) fill(td, col.render(item, tr));
        return;
      }
      const content = col.render(item, tr);
      const node = content instanceof Node ? content : document.createTextNode(content ?? "");
      const shown = node.outerHTML ?? node.textContent;
      if (shown !== tr._shown[i]) {
        fill(td, node);
        tr._shown[i] = shown;
      }
    });
    rows.push(tr);
  }
  rows.forEach((tr, i) => {
    if (tbody.rows[i] !== tr) tbody.insertBefore(tr, tbody.rows[i] || null);
  });
  for (const tr of old.values()) tr.remove();
}

export function table(headers, cls = "") {
  const tbody = h("tbody");
  const t = h("table", { class: cls },
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))), tbody);
  return { el: h("div", { class: "scroll" }, t), table: t, tbody };
}

// Run fn over items, at most `limit` at a time (a browser opens ~6 connections per host).
export async function eachLimited(items, limit, fn) {
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      await fn(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

// A link inside the page: the route and its parameters live in the URL's fragment (so the
// browser's back button works); the key never does.
export function href(route, params = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, v);
  }
  const s = q.toString();
  return `#${route}${s ? `?${s}` : ""}`;
}

export function errorBox(err, what = "") {
  return h("p", { class: "error", role: "alert" }, what ? `${what}: ` : "", err.message || String(err));
}

// "view / a / b" with a link on each step; `link(path)` gives the href of a directory.
export function breadcrumb(viewId, path, link) {
  const parts = path.split("/").filter(Boolean);
  const steps = [h("a", { href: link("/") }, viewId)];
  parts.forEach((p, i) => {
    const to = `/${parts.slice(0, i + 1).join("/")}`;
    steps.push(h("span", { class: "sep" }, "/"),
      i === parts.length - 1 ? h("span", { "aria-current": "page" }, p) : h("a", { href: link(to) }, p));
  });
  return h("nav", { class: "crumbs", "aria-label": "path" }, steps);
}

export function parentOf(path) {
  const i = path.lastIndexOf("/");
  return i <= 0 ? "/" : path.slice(0, i);
}

// A path that may break after each "/" on a narrow screen (and nowhere else if it can).
export function pathText(path) {
  const parts = path.split("/");
  return h("span", { class: "path" }, parts.map((p, i) => i ? [h("wbr"), `/${p}`] : p));
}
