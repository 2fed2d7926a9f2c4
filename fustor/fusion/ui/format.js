// Sizes, counts and times in human form, with the exact value on hover.
import { h } from "./dom.js";

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
const DIGITS = new Intl.NumberFormat("en-US"); // one formatter: making one per number is slow

export function sizeText(bytes) {
  if (bytes === null || bytes === undefined) return "–";
  let v = Number(bytes);
  let u = 0;
  while (Math.abs(v) >= 1024 && u < UNITS.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} B` : `${v >= 100 ? v.toFixed(0) : v.toFixed(1)} ${UNITS[u]}`;
}

export function size(bytes) {
  if (bytes === null || bytes === undefined) return h("span", { class: "muted" }, "–");
  return h("span", { class: "num", title: `${DIGITS.format(bytes)} bytes` },
    sizeText(bytes));
}

export function count(n) {
  if (n === null || n === undefined) return h("span", { class: "muted" }, "–");
  const exact = DIGITS.format(n);
  if (Math.abs(n) < 100000) return h("span", { class: "num" }, exact);
  const units = [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]];
  const [d, s] = units.find(([d]) => Math.abs(n) >= d);
  return h("span", { class: "num", title: exact }, `${(n / d).toFixed(1)}${s}`);
}

export function durationText(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.max(0, Number(seconds));
  if (s < 1) return `${(s * 1000).toFixed(0)} ms`;
  if (s < 60) return `${s < 10 ? s.toFixed(1) : s.toFixed(0)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${(s / 3600).toFixed(s < 36000 ? 1 : 0)} h`;
  return `${(s / 86400).toFixed(s < 864000 ? 1 : 0)} d`;
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return h("span", { class: "muted" }, "–");
  return h("span", { title: `${Number(seconds).toFixed(3)} s` }, durationText(seconds));
}

export function exactTime(ts) {
  const d = new Date(ts * 1000);
  const pad = (x, n = 2) => String(x).padStart(n, "0");
  const off = -d.getTimezoneOffset();
  const tz = `${off >= 0 ? "+" : "-"}${pad(Math.floor(Math.abs(off) / 60))}:${pad(Math.abs(off) % 60)}`;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.` +
    `${pad(d.getMilliseconds(), 3)} ${tz} (${ts})`;
}

// "3 min ago" relative to `now` (seconds; the server's clock where it gave one).
export function ago(ts, now = Date.now() / 1000) {
  if (!ts) return h("span", { class: "muted" }, "never");
  const d = now - ts;
  const text = d < -1 ? `in ${durationText(-d)}` : d < 1 ? "just now" : `${durationText(d)} ago`;
  return h("time", { title: exactTime(ts) }, text);
}

// "1 file", "2 files"
export function plural(n, one, many = `${one}s`) {
  return n === 1 ? one : many;
}
