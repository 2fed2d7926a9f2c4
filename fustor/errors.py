"""Every error a user can cause or must act on, in one tree.

    FustorError                      base; ``status`` (HTTP) and ``code`` (stable, machine-readable)
    ├── ConfigError                  a config file/key is wrong            400 config_invalid
    ├── PathError                    a path cannot be stored (.., NUL, …)  422 path_invalid
    ├── NotFoundError                a path/view/session does not exist    404 not_found
    └── StoreError                   the on-disk store cannot do the job   500 store_error
        ├── StoreFormatError         written by an older/newer fustor      409 store_format
        ├── StoreFullError           disk or file-size limit reached       503 store_full (retryable)
        └── StoreClosedError         the store was closed                  503 store_closed

The HTTP layer turns any of these into ``{"detail": message, "code": code}`` with
``status``; the CLI prints ``error: message`` on stderr and exits non-zero.
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


class PathError(FustorError):
    status = 422
    code = "path_invalid"


class NotFoundError(FustorError):
    status = 404
    code = "not_found"


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


class StoreClosedError(StoreError):
    status = 503
    code = "store_closed"
