// Sign-in: the user pastes a key; it is checked with GET /api/v1/me before it is kept.
import { api } from "./api.js";
import { h } from "./dom.js";

export function mount(el, { onSignedIn, message }) {
  const input = h("input", { type: "password", id: "key", name: "key", autocomplete: "off",
    spellcheck: false, required: true, placeholder: "paste an API key" });
  const error = h("p", { class: "error", role: "alert", hidden: !message }, message || "");
  const button = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h("form", { class: "signin", onsubmit: async (ev) => {
    ev.preventDefault();
    const k = input.value.trim();
    if (!k) return;
    button.disabled = true;
    error.hidden = true;
    try {
      const me = await api("/api/v1/me", { apiKey: k });
      onSignedIn(k, me);
    } catch (e) {
      error.textContent = e.message;
      error.hidden = false;
      input.select();
    } finally {
      button.disabled = false;
    }
  } },
  h("h1", {}, "Sign in to fustor"),
  h("p", { class: "muted" }, "A query key shows its views; an admin key shows the whole site ",
    "and lets you act on it. The key stays in this browser tab only (until you sign out or ",
    "close the tab)."),
  h("label", { htmlFor: "key" }, "API key"),
  h("div", { class: "row" }, input, button),
  error);
  el.append(form);
  input.focus();
}
