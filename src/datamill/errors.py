"""Errors a user can see.

Every error raised past the ``db`` and ``store`` boundary is a :class:`DatamillError`.
Each class carries an HTTP ``status`` and a ``code``; its docstring is the default
message, and every message says what to do next. The API turns them into one JSON
shape (``{"ok": false, "status", "error", "code", "detail"}``), the CLI into a
one-line message on stderr.
"""

from __future__ import annotations

from typing import Any


class DatamillError(Exception):
    """Something went wrong in datamill. Run the command again with -v for details."""

    status: int = 500
    code: str = "error"

    def __init__(self, message: str | None = None, **detail: Any) -> None:
        self.message = message or (self.__doc__ or self.code).strip()
        self.detail = detail
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        """The JSON body the API returns for this error."""
        return {
            "ok": False,
            "status": self.status,
            "code": self.code,
            "error": self.message,
            "detail": self.detail,
        }


class InvalidInput(DatamillError):
    """The request is malformed. Check the arguments against `datamill --help` or the API docs."""

    status = 400
    code = "invalid_input"


class InvalidName(InvalidInput):
    """That name cannot be used for a folder or item. Pick a name without '/', control characters, or '.'/'..'."""

    code = "invalid_name"


class InvalidMetadata(InvalidInput):
    """Metadata must be a JSON object with string keys. Fix the JSON and try again."""

    code = "invalid_metadata"


class InvalidPipeline(InvalidInput):
    """The pipeline is not valid. Fix the step or file named in the message and try again."""

    code = "invalid_pipeline"


class UnknownPipeline(InvalidPipeline):
    """No registered pipeline has that name. `datamill pipelines ls` lists them; a site admin registers more."""

    code = "unknown_pipeline"


class InvalidStepOption(InvalidPipeline):
    """A step option has a value it cannot take. Fix the option named in the message and try again."""

    # (The docstring is the default message, so the attributes are described here.) ``field`` names
    # the option ("retries", "params.threshold"); ``problem`` is what is wrong with it, worded without
    # the step's name, so a YAML pipeline can show it at the field's line. ``detail`` stays as for
    # InvalidPipeline (the step, and the parameter where there is one); the code too, for API clients.
    def __init__(
        self, message: str | None = None, *, field: str = "", problem: str | None = None, **detail: Any
    ) -> None:
        super().__init__(message, **detail)
        self.field = field
        self.problem = problem if problem is not None else self.message


class ImageNotAllowed(InvalidPipeline):
    """A container image is not in the allowed_images setting. Ask a site admin to allow it, or use an allowed one."""

    code = "image_not_allowed"


class InvalidDataflow(InvalidInput):
    """The dataflow configuration is not valid. Fix the field named in the message and try again."""

    code = "invalid_dataflow"


class ConfigError(DatamillError):
    """The configuration is not valid. Fix the key named in the message in datamill.toml or the environment."""

    status = 500
    code = "config_error"


class Unauthorized(DatamillError):
    """No valid token was given. Pass one with --token / DATAMILL_TOKEN or an 'Authorization: Bearer' header."""

    status = 401
    code = "unauthorized"


class PermissionDenied(DatamillError):
    """You do not have permission for that. Ask an admin of the folder to share it with you."""

    status = 403
    code = "permission_denied"


class NotFound(DatamillError):
    """No such object, or you may not see it. Check the path with `datamill folder ls`."""

    status = 404
    code = "not_found"


class AlreadyExists(DatamillError):
    """That name is taken. Choose another name or remove the existing object first."""

    status = 409
    code = "already_exists"


class Conflict(DatamillError):
    """The object is in a state that does not allow this. Check its state and try again."""

    status = 409
    code = "conflict"


class NotEmpty(Conflict):
    """The folder is not empty. Remove its contents first or pass --recursive."""

    code = "not_empty"


class BlobNotFound(DatamillError):
    """The stored bytes for this version are missing. Restore the blob directory from a backup."""

    status = 500
    code = "blob_missing"


class BlobCorrupted(DatamillError):
    """The stored bytes do not match their digest: the blob is corrupted. Restore it from a backup or re-upload."""

    status = 500
    code = "blob_corrupted"


class UploadIncomplete(InvalidInput):
    """The upload ended before all bytes arrived; nothing was stored. Send the file again."""

    code = "upload_incomplete"


class DigestMismatch(InvalidInput):
    """The uploaded bytes do not match the digest the client announced; nothing was stored. Send again."""

    code = "digest_mismatch"


class BadChunk(InvalidInput):
    """A stream message is not a valid file chunk. Check the producer (OpenMSIStream's format) and resend the file."""

    code = "bad_chunk"


class StepFailed(DatamillError):
    """A step failed. See the task's log with `datamill logs TASK`."""

    status = 500
    code = "step_failed"


class TaskTimeout(StepFailed):
    """The task ran past its timeout and was stopped. Raise the step's timeout or make it faster."""

    code = "task_timeout"


class WorkerCrashed(StepFailed):
    """The worker process running the task died. The step may have crashed the interpreter; see the log."""

    code = "worker_crashed"


class Cancelled(DatamillError):
    """The run was cancelled. Start it again with `datamill runs retry RUN`: what finished is cached."""

    status = 409
    code = "cancelled"


class RangeNotSatisfiable(InvalidInput):
    """The requested byte range lies outside the file. Ask for a range within its size."""

    status = 416
    code = "range_not_satisfiable"


class TooLarge(InvalidInput):
    """The request is too large. Send less (split it up) or stream the bytes as an upload."""

    status = 413
    code = "too_large"


class HeadersTooLarge(InvalidInput):
    """A request header is too large. Send shorter headers (a token is under 100 characters)."""

    status = 431
    code = "headers_too_large"


class TooManyRequests(DatamillError):
    """Too many requests of this kind at once. Wait a few seconds and try again."""

    status = 429
    code = "too_many_requests"


class Unavailable(DatamillError):
    """The server is shutting down. Connect again once it is back."""

    status = 503
    code = "unavailable"


class HomeInUse(Conflict):
    """Another datamill server already serves this home. Use that server, or stop it first."""

    code = "home_in_use"


class IdempotencyKeyReused(Conflict):
    """This Idempotency-Key was already used for a different upload. Send a new key for a new upload."""

    code = "idempotency_key_reused"
