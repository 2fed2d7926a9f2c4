"""Fuzz scenario of bench/chaos.py: every operation in fusion's OpenAPI document, driven by
property-based requests (hypothesis) with every kind of key.

Why hypothesis rather than schemathesis: the properties checked here are fustor's own (no
5xx but a retryable 503, every error ``{"detail": str, "code": str}``, a missing key is 401
and a key of the wrong kind 403 before anything is validated), and the key kind is one axis
of every request. Schemathesis would generate the requests from the same document, but its
built-in response checks expect the error bodies the document declares (FastAPI documents
its own 422 shape, which fusion replaces), so those checks would be switched off and these
written anyway, and it brings a dozen more packages into the test extra. Hypothesis alone
(one small dependency) gives the generation engine, its edge cases and shrinking to a
minimal failing request; the strategies below read the document for parameters and bodies.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import orjson
from chaos_procs import (
    ADMIN_KEY,
    OLD,
    Site,
    complete_snapshot,
    ingest_key,
    query_key,
    verify_stores,
)
from hypothesis import HealthCheck, Phase, Verbosity, example, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

VIEWS = {"fz": {}, "other": {}, "forest": {"members": ["fa", "fb"]}}
KEYS = {"none": None, "unknown": "chaos-not-a-key", "ingest": ingest_key("fz"),
        "query": query_key("fz"), "query-other": query_key("other"), "admin": ADMIN_KEY}
RIGHT_KEYS = {"admin": ["admin"], "ingest": ["ingest"], "query": ["query", "admin"],
              "any": ["ingest", "query", "admin"]}
LIVE = "<a live session of pipe fz>"
OMIT = object()

NAME = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
PATHS = st.one_of(
    st.sampled_from(["/", "/d0", "/d0/f00.dat", "/nope", "", ".", "..", "/../x", "/a/./b",
                     "//d0//", "/d0/", "/a\x00b", "/" + "n" * 300, "/d0/" + "x" * 256,
                     "/%ff", "/ü/日本", "\\d0", "/d0/f00.dat/x"]),
    st.lists(NAME, max_size=4).map(lambda xs: "/" + "/".join(xs)), NAME)
NUMBERS = st.one_of(st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False),
                    st.sampled_from([0, -1, 1e308, 1e-308, 2**53 + 1]))
JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=20)),
    lambda kids: st.one_of(st.lists(kids, max_size=4),
                           st.dictionaries(st.text(max_size=10), kids, max_size=4)),
    max_leaves=12)
ROW = st.fixed_dictionaries({"path": PATHS}, optional={
    "size": st.one_of(NUMBERS, st.text(max_size=5), st.none()),
    "modified_time": st.one_of(NUMBERS, st.text(max_size=5), st.none()),
    "created_time": NUMBERS, "is_directory": st.one_of(st.booleans(), st.none(), NUMBERS),
    "is_dir": st.booleans(), "file_name": NAME, "parent_path": PATHS,
    "parent_mtime": NUMBERS, "audit_skipped": st.one_of(st.booleans(), JSON),
    "mtime": NUMBERS, "status": st.sampled_from(["exists", "missing", "gone", ""]),
    "current_mtime": NUMBERS})
RAW = st.one_of(st.binary(max_size=100), st.sampled_from([
    b"", b"{", b"[]", b"null", b'"x"', b"1e999", b'{"events": 1}', b"[" * 5000,
    b'{"events": [' + b"[" * 3000, b"\xff\xfe{}", b'{"events": [], "is_end": "yes"}']))
PARAM_TEXT = {"path": PATHS, "after": st.one_of(NAME, PATHS), "pattern": st.one_of(
    NAME, st.text(alphabet="*?[]!^-/abcdf0.\\", max_size=12)),
    "best": st.sampled_from(["file_count", "total_size", "latest_mtime", "dir_count", "x"]),
    "members": st.sampled_from(["fa", "fb", "fa,fb", "fa,zz", ","])}
PATH_PARAMS = {"view_id": st.one_of(st.sampled_from(list(VIEWS) + ["nope"]), NAME),
               "session_id": st.one_of(st.just(LIVE), st.uuids().map(str), NAME),
               "agent_id": st.one_of(st.just("chaos-agent"), NAME),
               "job_id": st.one_of(st.uuids().map(str), NAME)}


def from_schema(s: dict, name: str = "") -> st.SearchStrategy:
    """Values a JSON schema admits (mostly), with fustor's own shapes where the schema
    says only "object" (event rows, suspect updates)."""
    if name in ("rows", "updates"):
        return st.lists(st.one_of(ROW, ROW, st.dictionaries(st.text(max_size=8), JSON,
                                                            max_size=4)), max_size=6)
    if "enum" in s:
        return st.sampled_from(s["enum"])
    if "anyOf" in s:
        return st.one_of([from_schema(x, name) for x in s["anyOf"]])
    t = s.get("type")
    if t == "string":
        return PARAM_TEXT.get(name, st.text(max_size=20))
    if t == "integer":
        return st.integers(s.get("minimum"), s.get("maximum"))
    if t == "number":
        return st.floats(s.get("minimum"), s.get("maximum"), allow_nan=False,
                         allow_infinity=False)
    if t == "boolean":
        return st.booleans()
    if t == "null":
        return st.none()
    if t == "array":
        return st.lists(from_schema(s.get("items", {}), name), max_size=4)
    if t == "object" or "properties" in s:
        props = s.get("properties", {})
        if not props:
            return st.dictionaries(st.text(max_size=10), JSON, max_size=4)
        required = set(s.get("required", []))
        return st.fixed_dictionaries(
            {k: from_schema(v, k) for k, v in props.items() if k in required},
            optional={k: from_schema(v, k) for k, v in props.items() if k not in required})
    return JSON


def request_strategy(method: str, path: str, op: dict) -> st.SearchStrategy:
    params = op.get("parameters", [])
    path_names = [p["name"] for p in params if p["in"] == "path"]
    query = {p["name"]: st.one_of(st.just(OMIT), from_schema(p.get("schema", {}), p["name"]),
                                  st.text(max_size=12), NUMBERS)
             for p in params if p["in"] == "query"}
    schema = (op.get("requestBody", {}).get("content", {}).get("application/json", {})
              .get("schema"))
    if schema is not None:
        valid = from_schema(schema).map(lambda v: ("json", v))
        body = st.one_of(valid, valid, valid, JSON.map(lambda v: ("json", v)),
                         RAW.map(lambda b: ("raw", b)))
    else:  # a body where none is read must change nothing
        body = st.one_of(st.just(None), st.just(None), RAW.map(lambda b: ("raw", b)))
    # every kind of key, but the one the route wants more often, to get past the key check
    right = st.sampled_from(RIGHT_KEYS.get(op.get("x-fustor-scope"), list(KEYS)))
    return st.fixed_dictionaries({
        "key": st.one_of(right, right, st.sampled_from(list(KEYS))),
        "path": st.fixed_dictionaries({n: PATH_PARAMS.get(n, NAME) for n in path_names}),
        "query": st.fixed_dictionaries(query),
        "body": body,
    })


class Fuzzer:
    def __init__(self, site: Site) -> None:
        self.site = site
        self.http = httpx.Client(base_url=site.url, timeout=60)  # no key by default
        self.requests = 0
        self.last_failing: dict | None = None
        self.statuses: dict[int, int] = {}

    def live_session(self) -> str:
        r = self.http.post(f"{self.site.rurl}/api/v1/pipe/session/", json={"task_id": "fuzz:main"},
                           headers={"X-API-Key": KEYS["ingest"]})
        return r.json()["session_id"] if r.status_code == 200 else "no-live-session"

    def send(self, method: str, template: str, req: dict) -> httpx.Response:
        url = template
        for name, value in req["path"].items():
            if value == LIVE:
                value = self.live_session()
            url = url.replace("{" + name + "}", quote(value, safe=""))
        key = KEYS[req["key"]]
        headers = {"X-API-Key": key} if key is not None else {}
        content = None
        if req["body"] is not None:
            kind, value = req["body"]
            # json, not orjson: integers past 64 bits must reach the server too
            content = json.dumps(value, ensure_ascii=False).encode() if kind == "json" else value
            headers["content-type"] = "application/json"
        params = {k: (v if isinstance(v, str) else json.dumps(v))
                  for k, v in req["query"].items() if v is not OMIT}
        self.requests += 1
        r = self.http.request(method.upper(), url, params=params, content=content, headers=headers)
        self.statuses[r.status_code] = self.statuses.get(r.status_code, 0) + 1
        return r

    def close(self) -> None:
        self.http.close()


def problems_of(r: httpx.Response, scope: str, req: dict) -> list[tuple[str, str]]:
    """(kind, what) for each property the answer breaks."""
    out = []
    s = r.status_code
    if s >= 500 and s != 503:
        out.append(("server_errors", f"{s} {r.text[:200]}"))
    # a path parameter that is "/"-bearing or a dot segment does not address the route at
    # all: the router answers before any route, and so before any key check (see unrouted)
    routed = not any(v in (".", "..") or "/" in v for v in req["path"].values())
    if s >= 400 and routed:
        try:
            body = orjson.loads(r.content)
        except orjson.JSONDecodeError:
            body = None
        if not (isinstance(body, dict) and set(body) == {"detail", "code"}
                and isinstance(body["detail"], str) and isinstance(body["code"], str)):
            out.append(("bad_error_shapes", f"{s} {r.text[:200]!r}"))
        if s == 503 and "retry-after" not in r.headers:
            out.append(("bad_error_shapes", "503 without Retry-After"))
    key = req["key"]
    if scope != "public" and routed:
        want = None
        if key in ("none", "unknown"):
            want = 401
        elif scope == "admin" and key != "admin":
            want = 403
        elif scope == "ingest" and key != "ingest":
            want = 403
        elif scope == "query" and (key == "ingest" or (
                key == "query-other" and req["path"].get("view_id") != "other")
                or (key == "query" and req["path"].get("view_id") != "fz")):
            want = 403
        if want is not None and s != want:
            out.append(("auth_violations", f"{key} key on a {scope} route: {s}, want {want}"))
    return out


def property_test(fz: Fuzzer, method: str, path: str, op: dict, examples: int, seed: int):
    """One operation's property: whatever the request, the answer keeps every rule of
    :func:`problems_of`; hypothesis shrinks a breaking request to a minimal one."""
    scope = op.get("x-fustor-scope", "?")

    def run(req):
        r = fz.send(method, path, req)
        bad = problems_of(r, scope, req)
        if bad:
            fz.last_failing = req  # after shrinking, hypothesis replays the minimal one last
            raise AssertionError(bad)

    for req in explicit_requests(op):  # the edges every run tries, whatever the seed
        run = example(req=req)(run)
    run = given(req=request_strategy(method, path, op))(run)
    run = settings(max_examples=examples, deadline=None, database=None,
                   verbosity=Verbosity.quiet, suppress_health_check=list(HealthCheck),
                   report_multiple_bugs=False,
                   phases=[Phase.explicit, Phase.generate, Phase.shrink])(run)
    return hypothesis_seed(seed)(run)


def explicit_requests(op: dict) -> list[dict]:
    """The right key with an empty, a deeply nested and a non-JSON body; an unknown key."""
    names = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
    good = {"view_id": "fz", "session_id": LIVE, "agent_id": "chaos-agent", "job_id": "none"}
    valid = {n: good.get(n, "x") for n in names}
    right = RIGHT_KEYS.get(op.get("x-fustor-scope"), ["admin"])[0]
    out = [{"key": "unknown", "path": valid, "query": {}, "body": None}]
    for body in (b"", b"[" * 5000, b"\xff not json"):
        out.append({"key": right, "path": valid, "query": {}, "body": ("raw", body)})
    return out


def unrouted(fz: Fuzzer, ops: list) -> list[str]:
    """A path parameter holding "/" makes a URL no route matches: the router's own 404 (and
    405) must be in the error shape too. One probe per operation with path parameters (the
    fuzz leaves these URLs out of its shape property, so that they do not hide the rest)."""
    out = []
    for method, path, op in ops:
        names = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
        if not names:
            continue
        req = {"key": "admin", "path": {n: "/" for n in names}, "query": {}, "body": None}
        r = fz.send(method, path, req)
        for _kind, what in problems_of(r, "public", {**req, "path": {}}):
            out.append(f"{method.upper()} {path}: {what}; request: {_shown(req)}")
    return out


def fuzz(work: Path, examples: int, seed: int, budget_s: float) -> dict:
    site = Site(work, VIEWS, session_timeout=30)
    set_hypothesis_home_dir(str(work / "hypothesis"))  # its caches, not in the caller's cwd
    out: dict = {}
    found: dict[str, list[str]] = {"server_errors": [], "bad_error_shapes": [],
                                   "auth_violations": []}
    fuzzer = None
    try:
        site.start()
        _fill(site)
        doc = httpx.get(site.url + "/openapi.json", timeout=30).raise_for_status().json()
        fz = fuzzer = Fuzzer(site)
        ops = [(m, p, op) for p, item in doc["paths"].items() for m, op in item.items()
               if m in ("get", "post", "put", "delete", "patch")]
        out["operations"] = len(ops)
        fuzzed = 0
        t0 = time.monotonic()
        for i, (method, path, op) in enumerate(ops):
            if time.monotonic() - t0 > budget_s:
                break
            run = property_test(fz, method, path, op, examples, seed + i)
            try:
                run()
            except AssertionError as exc:
                for kind, what in exc.args[0]:
                    shown = f"{method.upper()} {path}: {what}; minimal request: " \
                            f"{_shown(fz.last_failing)}"
                    found[kind].append(shown[:600])
            fuzzed += 1
        found["bad_error_shapes"] += unrouted(fz, ops)
        out["half_body_disconnects"] = half_bodies(site, fz)
        out["operations_fuzzed"] = fuzzed
        out["requests"] = fz.requests
        out["statuses"] = dict(sorted(fz.statuses.items()))
        for kind, items in found.items():
            out[kind] = len(items)
            if items:
                out[f"first_{kind}"] = items[:3]
        out["fusion_alive"] = site.fusion.alive()
        site.stop_fusion()
        out["fusion_tracebacks"] = site.tracebacks()  # once its log is complete
    finally:
        if fuzzer is not None:
            fuzzer.close()
        site.close()
    problems = verify_stores(site.stores())
    out["verify_failures"] = len(problems)
    if problems:
        out["verify_problems"] = problems[:5]
    return out


def half_bodies(site: Site, fz: Fuzzer) -> int:
    """Clients that go away in the middle of a body (an agent killed or timing out while it
    uploads): fusion must shrug, not log a traceback. Returns the number sent."""
    cases = [("POST", f"/api/v1/pipe/ingest/{fz.live_session()}/events", KEYS["ingest"]),
             ("PUT", "/api/v1/views/fz/suspect-list", KEYS["admin"]),
             ("POST", "/api/v1/management/agents/chaos-agent/command", KEYS["admin"])]
    for method, path, key in cases:
        head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\n"
                "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
        with socket.create_connection(("127.0.0.1", site.port), timeout=10) as sock:
            sock.sendall(head.encode() + b'{"events": [')
    r = fz.http.get("/")  # fusion still answers
    return len(cases) if r.status_code == 200 else -1


def _shown(req: dict | None) -> str:
    if req is None:
        return "?"
    body = req["body"]
    if body is not None:
        body = body[1] if body[0] == "json" else body[1][:80]
    return repr({"key": req["key"], "path": req["path"],
                 "query": {k: v for k, v in req["query"].items() if v is not OMIT},
                 "body": body})[:400]


def _fill(site: Site) -> None:
    """A few files in the fs view and in both forest members, snapshots complete."""
    for pipe in ("fz", "fa", "fb"):
        rows = [{"path": f"/d{j % 3}/f{j:02d}.dat", "size": j, "modified_time": OLD + j,
                 "created_time": OLD, "is_directory": False} for j in range(30)]
        with httpx.Client(base_url=site.rurl, headers={"X-API-Key": ingest_key(pipe)},
                          timeout=30) as c:
            sid = c.post("/api/v1/pipe/session/", json={"task_id": f"fill:{pipe}"}).json()["session_id"]
            c.post(f"/api/v1/pipe/ingest/{sid}/events", content=orjson.dumps({
                "events": [{"event_type": "update", "event_schema": "fs", "table": "files",
                            "fields": list(rows[0]), "rows": rows, "index": 1,
                            "message_source": "snapshot"}],
                "source_type": "snapshot", "is_end": True})).raise_for_status()
    complete_snapshot(site.rurl, "other")
