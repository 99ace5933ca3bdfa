"""One request line from the socket, parsed with bounded size, depth and magnitude and every common field
typed exactly. Anyone who can open the socket can send anything: a bad request becomes a
:class:`RequestError` naming its field (the reply says which), never another exception, so nothing a
client sends reaches the server thread's catch-all (which would drop the connection).

The line's length is bounded by the reader (``MAX_LINE``) before it gets here. ``json.loads`` recurses
once per nesting level and raises RecursionError (not a ValueError) near the interpreter's limit: that is
caught here, and anything nested deeper than ``MAX_DEPTH`` is refused after parsing by an iterative walk
(no request needs more than an object holding a list). NaN and Infinity (not JSON, but Python's json
reads them) are left to the typed fields, which refuse them by name: a NaN compares false with every
bound, so each number is checked finite before its range."""
from __future__ import annotations

import json
import math

OPS = ("subscribe", "snapshot", "history", "audit", "login", "logout", "action")
MAX_DEPTH = 4                   # {"op": ..., "units": [1, 2]} is 2 deep
ID_MAX_ABS = 2 ** 53            # an integer id a JSON peer in any language reads back exactly
ID_MAX_CHARS = 64
OP_MAX_CHARS = 32
PIN_MAX_CHARS = 64
HZ_MAX = 1000.0                 # a subscription asks for <= this (and gets <= the server's publish_hz)
AUDIT_OP_DEFAULT_N = 100        # the audit op's records per reply (default / most)
AUDIT_OP_MAX_N = 200


class RequestError(ValueError):
    """A refused request: ``field`` names what was wrong ("request" for the line as a whole)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def show(v) -> str:
    """A client's value in a message, bounded: never more than ~50 characters whatever was sent."""
    if v is None:
        return "null"
    if type(v) is bool:
        return "a bool (" + ("true" if v else "false") + ")"
    if type(v) is int:
        return repr(v) if v.bit_length() <= 64 else f"an integer of {v.bit_length()} bits"
    if type(v) is float:
        return repr(v)
    if isinstance(v, str):
        return repr(v[:40]) + ("..." if len(v) > 40 else "")
    return {"list": "a list", "dict": "an object"}.get(type(v).__name__, "a " + type(v).__name__)


def _depth_over(obj, limit: int) -> bool:
    """Is any container nested deeper than `limit` (the top-level object is depth 1)? Iterative: a
    parsed line holds at most MAX_LINE nodes, and nothing here recurses."""
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if d > limit:
            return True
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values() if isinstance(v, (dict, list)))
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o if isinstance(v, (dict, list)))
    return False


def loads(line: bytes) -> object:
    """The JSON value of one line, or RequestError("request", ...): bad JSON, bad UTF-8, an integer of
    more than 4300 digits, nesting deeper than MAX_DEPTH."""
    try:
        obj = json.loads(line)
    except RecursionError:
        raise RequestError("request", f"bad request: nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:            # JSONDecodeError, UnicodeDecodeError, >4300-digit integers
        raise RequestError("request", f"bad request: {str(exc)[:100]}") from None
    if _depth_over(obj, MAX_DEPTH):
        raise RequestError("request", f"bad request: nested deeper than {MAX_DEPTH} levels")
    return obj


def number(req: dict, key: str, lo: float, hi: float, default: float) -> float:
    """A number field typed exactly: an int or a float (a bool is not a number), finite, in [lo, hi].
    Huge integers are compared exactly, never converted first (float(10**400) raises OverflowError)."""
    v = req.get(key, default)
    if type(v) not in (int, float) or (type(v) is float and not math.isfinite(v)) or not lo <= v <= hi:
        raise RequestError(key, f"{key} must be a number in [{lo:g}, {hi:g}], got {show(v)}")
    return float(v)


def integer(req: dict, key: str, lo: int, hi: int, default: int) -> int:
    v = req.get(key, default)
    if type(v) is not int or not lo <= v <= hi:
        raise RequestError(key, f"{key} must be an integer in [{lo}, {hi}], got {show(v)}")
    return v


def short_string(req: dict, key: str, max_chars: int, default=None) -> str:
    v = req.get(key, default)
    if not isinstance(v, str) or len(v) > max_chars:
        raise RequestError(key, f"{key} must be a string of at most {max_chars} characters, got {show(v)}")
    return v


def request_id(req: dict):
    """The id a reply carries back: absent/null, an integer with |id| <= 2^53 or a short string."""
    rid = req.get("id")
    if rid is None or (type(rid) is int and -ID_MAX_ABS <= rid <= ID_MAX_ABS) or \
            (isinstance(rid, str) and len(rid) <= ID_MAX_CHARS):
        return rid
    raise RequestError("id", f"id must be an integer (|id| <= 2^53) or a string of at most {ID_MAX_CHARS} "
                             f"characters, got {show(rid)}")


def parse(line: bytes) -> tuple[object, str, dict]:
    """(id, op, request) of a line, or RequestError. The op's own fields are typed by its handler
    through the helpers above (so each refusal names its field); here: the object, id and op."""
    req = loads(line)
    if not isinstance(req, dict):
        raise RequestError("request", f"bad request: a request is a JSON object, got {show(req)}")
    rid = request_id(req)
    op = req.get("op")
    if not isinstance(op, str) or len(op) > OP_MAX_CHARS or op not in OPS:
        err = RequestError("op", f"op must be one of {', '.join(OPS)}, got {show(op)}")
        err.rid = rid
        raise err
    return rid, op, req


def peek(line: bytes, max_bytes: int = 512) -> tuple[object, str | None]:
    """(id, op) of a short line, for a refusal made without serving it (rate limited): cheap and safe (a
    line this short cannot nest deep enough to matter); None for what a long or bad line does not say
    (an op only if it is one of OPS: the counters it keys stay a bounded set)."""
    if len(line) > max_bytes:
        return None, None
    try:
        req = loads(line)
    except RequestError:
        return None, None
    if not isinstance(req, dict):
        return None, None
    try:
        rid = request_id(req)
    except RequestError:
        rid = None
    op = req.get("op")
    return rid, (op if isinstance(op, str) and op in OPS else None)
