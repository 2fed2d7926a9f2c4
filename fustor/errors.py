"""Every error a user can cause or must act on, in one tree.

    FustorError                        base; ``status`` (HTTP) and ``code`` (stable, machine-readable)
    ├── ConfigError                    a config file/key is wrong               400 config_invalid
    ├── BadQueryError                  a query parameter makes no sense         400 bad_query
    ├── TooManyItemsError              an unbounded tree over the view's limit  400 too_many_items
    ├── MalformedJsonError             the body is not JSON                     400 malformed_json
    ├── AuthError                      no or unknown X-API-Key                  401 unauthorized
    ├── ForbiddenError                 the key may not touch this               403 forbidden
    ├── NotFoundError                  a path/view/job does not exist           404 not_found
    ├── ConflictError                  the action clashes with current state    409 conflict
    ├── SessionConflictError           view locked (concurrent push off)        409 view_locked
    ├── SessionObsoleteError           unknown or expired session: reconnect    419 session_obsolete
    ├── PathError                      a path cannot be stored (.., NUL, …)     422 path_invalid
    ├── BadPayloadError                a body of the wrong shape                422 invalid_payload
    ├── ReloadRefusedError             the new config is broken; old one kept   422 reload_refused
    ├── NotReadyError                  no snapshot completed yet (Retry-After)  503 view_not_ready
    └── StoreError                     the on-disk store cannot do the job      500 store_error
        ├── StoreFormatError           written by an older/newer fustor         409 store_format
        ├── StoreFullError             disk or file-size limit reached          503 store_full (retryable)
        ├── StoreBusyError             the writer queue is full (back-pressure) 503 store_busy (retryable)
        └── StoreClosedError           the store was closed                     503 store_closed

A connection accepted while the open-files limit is near is answered 503
``too_many_connections`` (retryable) by ``fusion/admission.py``, in the same shape.

The HTTP layer turns any of these into ``{"detail": message, "code": code}`` with
``status`` (503s carry ``Retry-After``); the CLI prints ``error: message`` on
stderr and exits non-zero.
"""

from __future__ import annotations


class FustorError(Exception):
    """Base of all fustor errors; the message says what to do."""

    status: int = 500
    code: str = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_body(self) -> dict[str, str]:
        return {"detail": self.message, "code": self.code}


class ConfigError(FustorError):
    status = 400
    code = "config_invalid"


class BadQueryError(FustorError):
    status = 400
    code = "bad_query"


class TooManyItemsError(FustorError):
    status = 400
    code = "too_many_items"


class MalformedJsonError(FustorError):
    status = 400
    code = "malformed_json"


class AuthError(FustorError):
    status = 401
    code = "unauthorized"


class ForbiddenError(FustorError):
    status = 403
    code = "forbidden"


class NotFoundError(FustorError):
    status = 404
    code = "not_found"


class ConflictError(FustorError):
    """E.g. a second upgrade for an agent with one pending."""

    status = 409
    code = "conflict"


class SessionConflictError(FustorError):
    status = 409
    code = "view_locked"


class SessionObsoleteError(FustorError):
    """The session is unknown or expired: the agent must create a new one."""

    status = 419
    code = "session_obsolete"


class PathError(FustorError):
    status = 422
    code = "path_invalid"


class BadPayloadError(FustorError):
    status = 422
    code = "invalid_payload"


class ReloadRefusedError(FustorError):
    """A reload could not be applied; the running config stays in force."""

    status = 422
    code = "reload_refused"


class NotReadyError(FustorError):
    """The view has never completed a snapshot; ``retry_after`` seconds is a good wait."""

    status = 503
    code = "view_not_ready"

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreError(FustorError):
    status = 500
    code = "store_error"


class StoreFormatError(StoreError):
    status = 409
    code = "store_format"


class StoreFullError(StoreError):
    """Disk full or file-size limit: nothing of the failed transaction was written."""

    status = 503
    code = "store_full"


class StoreBusyError(StoreError):
    """The writer queue is full; the caller should retry later (back-pressure)."""

    status = 503
    code = "store_busy"


class StoreClosedError(StoreError):
    status = 503
    code = "store_closed"
