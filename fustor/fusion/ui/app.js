// The page's shell: sign-in, the header, and the router that mounts one panel at a time.
// What is offered follows GET /api/v1/me: an admin key gets the overview and the actions,
// a query key its views (read-only), an ingest key an explanation.
import { forget } from "./actions.js";
import { api, key } from "./api.js";
import { errorBox, fill, h, href } from "./dom.js";
import * as browse from "./browse.js";
import * as forest from "./forest.js";
import * as overview from "./overview.js";
import * as signin from "./signin.js";
import * as viewList from "./views.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
let me = null;
let unmount = null;

function signOut(message) {
  key.clear();
  forget();
  me = null;
  show(() => signin.mount(main, { message, onSignedIn }));
  fill(nav);
  fill(who);
}

function onSignedIn(k, answer) {
  key.set(k);
  key.setScope(answer);
  me = answer;
  header();
  route();
}

function header() {
  const links = [];
  if (me.admin) links.push(h("a", { href: href("/") }, "Overview"));
  if (me.views.length) links.push(h("a", { href: href("/views") }, "Views"));
  links.push(h("a", { href: "/docs", target: "_blank", rel: "noopener" }, "API docs"));
  fill(nav, links);
  fill(who, h("span", { class: "key", title: `the ${me.kind} key ${me.key_id}` },
    me.key_id, " ", h("span", { class: `badge ${me.kind}` }, me.kind)),
  h("button", { type: "button", onclick: () => signOut() }, "Sign out"));
}

function show(mountFn) {
  if (unmount) unmount();
  unmount = null;
  fill(main);
  unmount = mountFn() || null;
}

const ctx = {
  get me() { return me; },
  signOut,
  // an API answer of 401 means the key went away (e.g. a config reload): sign in again
  failed(err) {
    if (err.status === 401) signOut(err.message);
  },
};

function route() {
  if (!me) return;
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  const params = new URLSearchParams(query || "");
  const parts = (path || "/").split("/").filter(Boolean).map(decodeURIComponent);
  document.body.dataset.route = parts[0] || "home";
  if (me.kind === "ingest" && !me.admin && !me.views.length) {
    show(() => { main.append(h("section", { class: "panel" },
      h("h1", {}, "An ingest key"),
      h("p", {}, `The key ${me.key_id} is an agent's key for pipe ${me.pipe}: it may push `,
        "events, not read views. Sign in with a query key or an admin key."))); });
    return;
  }
  if (parts[0] === "view" && parts[1]) {
    const v = me.views.find((x) => x.view_id === parts[1]);
    const panel = v && v.driver === "forest-fs" ? forest : browse;
    show(() => panel.mount(main, ctx, parts[1], params));
  } else if (parts[0] === "views" || (!parts[0] && !me.admin)) {
    show(() => viewList.mount(main, ctx));
  } else if (!parts[0] && me.admin) {
    show(() => overview.mount(main, ctx));
  } else {
    show(() => { main.append(errorBox(new Error(`nothing at #${path}`))); });
  }
}

async function start() {
  const k = key.get();
  if (!k) return signOut();
  const known = key.scope();
  if (known) { // a reload of the page: draw what the key could do a moment ago ...
    me = known;
    header();
    route();
    await new Promise((ok) => setTimeout(ok, 1000)); // (not competing with the first draw)
  }
  let fresh;
  try {
    fresh = await api("/api/v1/me");
  } catch (e) {
    if (e.status === 401) return signOut(e.message);
    if (!known) { // keep the key: fusion may be restarting
      show(() => { main.append(errorBox(e), h("button", { type: "button", onclick: start },
        "Try again")); });
    }
    return;
  }
  key.setScope(fresh);
  if (JSON.stringify(fresh) === JSON.stringify(known)) return;
  me = fresh; // ... and redraw if that changed (e.g. a reload gave it other views)
  header();
  route();
}

window.addEventListener("hashchange", route);
start();
