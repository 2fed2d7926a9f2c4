"""The agent's HTTP client for fusion's receiver (the 0.8.17 wire protocol).

Errors are sorted by what the pipe must do:

    SenderError
    ├── SessionObsoleteError   419, or a heartbeat answering status "error": open a new session
    ├── FusionUnavailableError network error, timeout, 429/5xx: back off and retry the same data
    └── FusionRejectedError    other 4xx (bad key, bad payload): back off, report, retry later

The transport is injectable (httpx's MockTransport / ASGITransport in tests).

``https://`` URLs are verified against the system trust store, or against ``ca_file`` (a
PEM bundle) when given; verification is never switched off. A certificate fusion's CA did
not sign is a FusionUnavailableError that says which setting fixes it, so the pipe backs
off and reports it like any other network error.

The API key never appears in an error message (fusion might echo it in a reply).
"""

from __future__ import annotations

import re
import ssl
import time
from collections.abc import Callable

import httpx

from fustor.protocol import dumps

PHASE_SOURCE_TYPE = {
    "snapshot": "snapshot", "realtime": "message", "audit": "audit", "sentinel": "message",
    "on_demand_job": "on_demand_job", "job_complete": "job_complete",
}


class SenderError(Exception):
    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class SessionObsoleteError(SenderError):
    pass


class FusionUnavailableError(SenderError):
    pass


class FusionRejectedError(SenderError):
    pass


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """Verification on: the system trust store, or only the CAs of ``ca_file``."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise SenderError(f"cannot use ca_file {ca_file}: {exc}; give a PEM file with the "
                          "certificate of the CA that signed fusion's certificate") from None


class FusionClient:
    def __init__(self, base_url: str, api_key: str | None, *, timeout: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None,
                 ca_file: str | None = None) -> None:
        headers = {"content-type": "application/json"}
        if api_key:
            headers["X-API-Key"] = api_key
        self._key = api_key or None
        base = httpx.URL(base_url.rstrip("/"))
        # what status pages and messages show: never a password written into the URL
        self.url = str(base.copy_with(username=None, password=None)) if base.userinfo else str(base)
        self.ca_file = ca_file
        self.reachable: bool | None = None  # None: not asked yet; False: last call had no answer
        self.observe_push: Callable[[float], None] | None = None  # push latency (metrics)
        self.last_answer_at: float | None = None
        # a transport of its own (tests) carries its own TLS settings; plain http never
        # does TLS, so it skips loading the trust store (~45 ms of every agent start) and
        # gets a context that verifies against no CA at all: it could never accept a peer
        if transport is not None:
            verify: ssl.SSLContext | bool = True
        elif base.scheme == "https" or ca_file:
            verify = tls_context(ca_file)
        else:
            verify = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._http = httpx.AsyncClient(base_url=base, headers=headers, timeout=timeout,
                                       transport=transport, verify=verify)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, url: str, body=None) -> dict:
        try:
            r = await self._http.request(method, url, content=None if body is None else dumps(body))
        except httpx.HTTPError as exc:
            self.reachable = False
            what = self._tls_problem(exc) or f"{type(exc).__name__}: {exc}"
            raise FusionUnavailableError(self._scrub(f"{method} {url}: {what}")) from None
        self.reachable, self.last_answer_at = True, time.time()
        if r.status_code < 400:
            try:
                data = r.json() if r.content else {}
            except ValueError:
                data = {}
            return data if isinstance(data, dict) else {"data": data}
        detail = self._scrub(_detail(r))
        if r.status_code == 419:
            raise SessionObsoleteError(f"{method} {url}: session obsolete ({detail})", 419)
        said = f"{method} {url}: HTTP {r.status_code} ({detail})"
        if _code(r) == "store_full":  # said first, so `status` shows what an operator must fix
            said = f"fusion disk full, retrying: {said}"
        if r.status_code == 429 or r.status_code >= 500:
            ra = r.headers.get("retry-after")
            raise FusionUnavailableError(said, r.status_code, float(ra) if ra and _num(ra) else None)
        raise FusionRejectedError(said, r.status_code)

    def _scrub(self, text: str) -> str:
        """``text`` with the key masked where it stands as a token of its own (a short key
        must not garble words that happen to contain it)."""
        if not self._key:
            return text
        return re.sub(rf"(?<![A-Za-z0-9]){re.escape(self._key)}(?![A-Za-z0-9])", "***", text)

    def _tls_problem(self, exc: BaseException) -> str | None:
        """What to do when the TLS handshake failed; None for other network errors."""
        cause: BaseException | None = exc
        for _ in range(10):  # httpx → httpcore → ssl: the cause is a few links down
            if cause is None or isinstance(cause, ssl.SSLError):
                break
            cause = cause.__cause__ or cause.__context__
        if not isinstance(cause, ssl.SSLError):
            return None
        u = httpx.URL(self.url)
        origin = f"{u.scheme}://{u.netloc.decode()}"
        if isinstance(cause, ssl.SSLCertVerificationError):
            reason = cause.verify_message or cause.reason or str(cause)
            now = f", now {self.ca_file}" if self.ca_file else ""
            return (f"TLS certificate of {origin} not trusted ({reason}); set the sender's "
                    f"ca_file{now} (--ca-file with --watch) to the CA that signed fusion's "
                    "certificate")
        return (f"TLS handshake with {origin} failed ({cause.reason or cause}); check that "
                "fusion serves https on this port")

    async def create_session(self, task_id: str, source_uri: str | None,
                             timeout_hint: int | None = None) -> dict:
        body = {"task_id": task_id, "source_type": "fs", "client_info": {"source_uri": source_uri}}
        if timeout_hint:
            body["session_timeout_seconds"] = int(timeout_hint)
        return await self._call("POST", "/api/v1/pipe/session/", body)

    async def heartbeat(self, session_id: str, can_realtime: bool, agent_status: dict | None) -> dict:
        body = {"can_realtime": can_realtime}
        if agent_status is not None:
            body["agent_status"] = agent_status
        data = await self._call("POST", f"/api/v1/pipe/session/{session_id}/heartbeat", body)
        if data.get("status") == "error":
            raise SessionObsoleteError(self._scrub(f"heartbeat: {data.get('message')}"))
        return data

    async def close_session(self, session_id: str) -> None:
        await self._call("DELETE", f"/api/v1/pipe/session/{session_id}")

    async def push(self, session_id: str, events: list[dict], phase: str, *, is_end: bool = False,
                   metadata: dict | None = None) -> dict:
        body = {"session_id": session_id, "events": events,
                "source_type": PHASE_SOURCE_TYPE.get(phase, "message"), "is_end": is_end}
        if metadata is not None:
            body["metadata"] = metadata
        t0 = time.monotonic()
        try:
            return await self._call("POST", f"/api/v1/pipe/ingest/{session_id}/events", body)
        finally:
            if self.observe_push is not None:
                self.observe_push(time.monotonic() - t0)

    async def audit_start(self) -> dict:
        return await self._call("POST", "/api/v1/pipe/consistency/audit/start")

    async def audit_end(self) -> dict:
        return await self._call("POST", "/api/v1/pipe/consistency/audit/end")

    async def sentinel_tasks(self) -> dict:
        return await self._call("GET", "/api/v1/pipe/consistency/sentinel/tasks")

    async def sentinel_feedback(self, updates: list[dict]) -> dict:
        return await self._call("POST", "/api/v1/pipe/consistency/sentinel/feedback",
                                {"type": "suspect_update", "updates": updates})


def _detail(r: httpx.Response) -> str:
    try:
        d = r.json()
        return str(d.get("detail", d)) if isinstance(d, dict) else str(d)
    except ValueError:
        return r.text[:200]


def _code(r: httpx.Response) -> str | None:
    try:
        d = r.json()
    except ValueError:
        return None
    return d.get("code") if isinstance(d, dict) else None


def _num(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def make_event(rows: list[dict], message_source: str, event_type: str = "update", index: int = -1) -> dict:
    """One wire event; ``fields`` lists the keys of the first row, as agents always did."""
    return {"event_type": event_type, "event_schema": "fs", "table": "files",
            "fields": list(rows[0]) if rows else [], "rows": rows, "index": index,
            "message_source": message_source}
