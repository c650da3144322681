"""Exceptions of the open functions. Reads never raise for a missing key:
a status says so (see larder.Status)."""


class LarderError(Exception):
    """Base of every Larder error. ``code`` is the C ABI's LARDER_E_* number,
    ``message`` the library's text (it names the problem and the fix)."""

    code = 0

    def __init__(self, message, code=None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidArgumentError(LarderError, ValueError):
    code = 1


class NotFoundError(LarderError, LookupError):
    """No such segment (is the sidecar running, is ``dir`` right?), table or field."""
    code = 2


class FieldNotFoundError(NotFoundError, KeyError):
    """No such field: the message lists the table's fields. Also a KeyError,
    so ``row["name"]`` raises what a mapping raises."""

    def __str__(self):  # KeyError's would print the message quoted
        return self.message


class GroupNotFoundError(NotFoundError, KeyError):
    """No such field group: the message lists the table's groups."""

    def __str__(self):
        return self.message


class NoValueError(KeyError):
    """``row["name"]`` of a field that has no value for this key (never
    written, or the key was not found): ``row.get("name")`` gives None."""

    def __str__(self):
        return self.args[0] if self.args else ""


class PermissionDeniedError(LarderError, PermissionError):
    """The segment file's mode or group does not let this process read it."""
    code = 3


class VersionMismatchError(LarderError):
    """The segment has another layout version than this library reads."""
    code = 4


class SchemaMismatchError(LarderError):
    code = 5


class NotReadyError(LarderError):
    """The segment is still being created: retry shortly."""
    code = 6


class CorruptError(LarderError):
    code = 7


class WriterLockedError(LarderError):
    code = 8


class NoSpaceError(LarderError):
    code = 9


class LarderSystemError(LarderError, OSError):
    code = 10


_BY_CODE = {cls.code: cls for cls in (InvalidArgumentError, NotFoundError, PermissionDeniedError,
                                      VersionMismatchError, SchemaMismatchError, NotReadyError, CorruptError,
                                      WriterLockedError, NoSpaceError, LarderSystemError)}


def from_code(code, message):
    """The exception for a LARDER_E_* code and its message."""
    cls = _BY_CODE.get(code, LarderError)
    return cls(message, code)
