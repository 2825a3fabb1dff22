"""HL7 v2.x messages (2.3.1 and 2.5): parsing, escaping and original-mode acknowledgements.

No third-party HL7 library: every byte a peer sends goes through the few lines below.
Fields are kept as received (still escaped) and decoded on access, because a message must be
split on its separators before escapes are resolved: an escaped ``\\S\\`` is data, not a component.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property

from clearinghouse.errors import HL7Error

SUPPORTED_VERSIONS = frozenset({"2.3.1", "2.5", "2.5.1"})
DEFAULT_VERSION = "2.5"

# HL7 table 0357, message error condition codes.
ERROR_TEXTS = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}

# HL7 table 0211 (MSH-18) to Python codecs. Only encodings in which the MSH segment reads as
# ASCII are listed: the separators and MSH-18 itself must be found before the charset is known.
CHARSETS = {
    "ASCII": "ascii",
    "ISO IR6": "ascii",
    "ISO IR100": "iso8859-1",
    "UNICODE": "utf-8",
    "UNICODE UTF-8": "utf-8",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc_kr",
    "BIG-5": "big5",
    **{f"8859/{n}": f"iso8859-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 15)},
}

_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
_VERSION = re.compile(r"\d+(\.\d+)*")
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})+")


class MalformedMessage(HL7Error):
    """A message that cannot be accepted; ``partial`` holds whatever of it could be parsed
    (at least the MSH, when readable) so that the ACK can still be addressed and correlated."""

    def __init__(
        self, text: str, *, ack_code: str, error_code: str, location: str = "", partial: Message | None = None
    ) -> None:
        super().__init__(text, ack_code=ack_code, error_code=error_code, location=location)
        self.partial = partial


@dataclass(frozen=True)
class Separators:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @property
    def encoding_characters(self) -> str:
        return self.component + self.repetition + self.escape + self.subcomponent


def unescape(text: str, seps: Separators, encoding: str = "ascii") -> str:
    """Resolve \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ and \\Xhh..\\; other sequences (highlighting, charset
    switches, formatting) are kept verbatim rather than guessed at."""
    esc = seps.escape
    if not esc or esc not in text:
        return text
    simple = {"F": seps.field, "S": seps.component, "T": seps.subcomponent, "R": seps.repetition, "E": esc}
    out: list[str] = []
    i = 0
    while (start := text.find(esc, i)) >= 0:
        end = text.find(esc, start + 1)
        if end < 0:
            break  # an unterminated escape is literal text
        out.append(text[i:start])
        seq = text[start + 1 : end]
        if seq in simple:
            out.append(simple[seq])
        elif seq[:1] == "X" and _HEX.fullmatch(seq[1:]):
            out.append(bytes.fromhex(seq[1:]).decode(encoding, "replace"))
        else:
            out.append(text[start : end + 1])
        i = end + 1
    out.append(text[i:])
    return "".join(out)


# Printable ASCII and anything beyond it except DEL: no control character that escape() must encode.
_PLAIN = re.compile(r"[^\x00-\x1f\x7f]*")


def escape(text: str, seps: Separators) -> str:
    """Escape a value for a field; control characters become \\Xhh\\ so that no CR (segment end)
    or MLLP block character can ever reach the wire inside a value."""
    specials = (seps.field, seps.component, seps.repetition, seps.escape, seps.subcomponent)
    if _PLAIN.fullmatch(text) and not any(c and c in text for c in specials):
        return text  # the common case (identifiers, names): nothing to escape, no per-character loop
    esc = seps.escape
    table = {
        esc: f"{esc}E{esc}",
        seps.field: f"{esc}F{esc}",
        seps.component: f"{esc}S{esc}",
        seps.subcomponent: f"{esc}T{esc}",
        seps.repetition: f"{esc}R{esc}",
    }
    out = []
    for ch in text:
        if ch in table:
            out.append(table[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"{esc}X{ord(ch):02X}{esc}")
        else:
            out.append(ch)
    return "".join(out)


@dataclass(frozen=True)
class Segment:
    """One segment; ``fields[n]`` is HL7 field n as received (``fields[0]`` is the segment id,
    and for MSH ``fields[1]`` the field separator, so numbering matches the standard)."""

    name: str
    fields: tuple[str, ...]
    separators: Separators
    encoding: str = "ascii"

    def raw(self, field: int) -> str:
        return self.fields[field] if 0 <= field < len(self.fields) else ""

    def repetition_count(self, field: int) -> int:
        raw = self.raw(field)
        return len(raw.split(self.separators.repetition)) if raw else 0

    def get(self, field: int, component: int = 1, repetition: int = 1, subcomponent: int = 1) -> str:
        """The decoded value at field.component.subcomponent of one repetition ('' if absent)."""
        raw = self.raw(field)
        if self.name == "MSH" and field <= 2:
            return raw  # the separators themselves: never split or unescaped
        s = self.separators
        value = _nth(raw, s.repetition, repetition)
        value = _nth(value, s.component, component)
        value = _nth(value, s.subcomponent, subcomponent)
        return unescape(value, s, self.encoding)


def _nth(text: str, sep: str, n: int) -> str:
    if sep not in text:  # most values have one repetition, component and subcomponent: no list to build
        return text if n == 1 else ""
    parts = text.split(sep)
    return parts[n - 1] if 1 <= n <= len(parts) else ""


class Message:
    """A parsed message: segments in order, with typed access to the MSH fields."""

    def __init__(self, segments: list[Segment], separators: Separators, encoding: str) -> None:
        self._segments = segments
        self.separators = separators
        self.encoding = encoding

    def segments(self, name: str | None = None) -> list[Segment]:
        return [s for s in self._segments if name is None or s.name == name]

    def segment(self, name: str, occurrence: int = 1) -> Segment | None:
        found = self.segments(name)
        return found[occurrence - 1] if 1 <= occurrence <= len(found) else None

    def get(
        self,
        segment: str,
        field: int,
        component: int = 1,
        repetition: int = 1,
        subcomponent: int = 1,
        *,
        occurrence: int = 1,
    ) -> str:
        seg = self.segment(segment, occurrence)
        return seg.get(field, component, repetition, subcomponent) if seg else ""

    @property
    def header(self) -> Segment:
        return self._segments[0]

    # MSH fields (for HD fields such as MSH-3, the first component: the namespace id). Read once each:
    # a message is not changed after parsing, and handlers, hooks and observers ask for them many times.
    @cached_property
    def sending_application(self) -> str:  # MSH-3, namespace id
        return self.header.get(3, 1)

    @cached_property
    def sending_facility(self) -> str:  # MSH-4
        return self.header.get(4, 1)

    @cached_property
    def receiving_application(self) -> str:  # MSH-5
        return self.header.get(5, 1)

    @cached_property
    def receiving_facility(self) -> str:  # MSH-6
        return self.header.get(6, 1)

    @cached_property
    def message_type(self) -> str:  # MSH-9.1, e.g. ADT
        return self.header.get(9, 1)

    @cached_property
    def trigger_event(self) -> str:  # MSH-9.2, e.g. A01
        return self.header.get(9, 2)

    @cached_property
    def message_structure(self) -> str:  # MSH-9.3, e.g. ADT_A01
        return self.header.get(9, 3)

    @cached_property
    def control_id(self) -> str:  # MSH-10
        return self.header.get(10, 1)

    @cached_property
    def processing_id(self) -> str:  # MSH-11 (P, D or T)
        return self.header.get(11, 1)

    @cached_property
    def version(self) -> str:  # MSH-12.1
        return self.header.get(12, 1)

    @cached_property
    def charset(self) -> str:  # MSH-18, first repetition
        return self.header.get(18, 1)


def _separators(head: bytes) -> Separators:
    """MSH-1 and MSH-2, i.e. the bytes after 'MSH': any characters, but distinct and not ones
    that would make the message ambiguous (letters, digits, whitespace)."""
    chars = head[3:9].decode("latin-1")
    fs = chars[:1]
    enc = chars[1:].split(fs)[0] if fs else ""
    if len(enc) == 5:
        enc = enc[:4]  # 2.7 truncation character: not used in 2.3.1/2.5
    bad = [c for c in fs + enc if c.isalnum() or c.isspace()]
    if not fs or len(enc) != 4 or bad or len(set(fs + enc)) != 5:
        raise MalformedMessage(
            "MSH-1/MSH-2 do not hold five distinct separator characters",
            ack_code="AR",
            error_code="102",
            location="MSH^1^2",
        )
    return Separators(fs, enc[0], enc[1], enc[2], enc[3])


def _split_segments(text: str, seps: Separators, encoding: str) -> list[Segment]:
    segments = []
    for n, line in enumerate(text.replace("\r\n", "\r").replace("\n", "\r").split("\r"), 1):
        if not line.strip():
            continue  # blank lines from LF/CRLF line endings or a trailing terminator
        name = line[:3]
        if not _SEGMENT_ID.fullmatch(name) or (len(line) > 3 and line[3] != seps.field):
            raise MalformedMessage(f"line {n} is not a segment (segment id {name!r})", ack_code="AE", error_code="100")
        fields = line.split(seps.field)
        if name == "MSH":
            fields.insert(1, seps.field)
        segments.append(Segment(name, tuple(fields), seps, encoding))
    return segments


def _codec(charset: str, hint: str | None) -> str | None:
    if not charset:
        return CHARSETS.get((hint or "").upper(), hint or "ascii")
    return CHARSETS.get(charset.strip().upper())


def _decode(data: bytes, charset: str, codec: str, partial: Message) -> str:
    try:
        return data.decode(codec)
    except (UnicodeDecodeError, LookupError):
        if charset:  # the sender declared a charset and broke it: refuse rather than guess
            raise MalformedMessage(
                f"message bytes are not valid {charset!r}",
                ack_code="AR",
                error_code="102",
                location="MSH^1^18",
                partial=partial,
            ) from None
    # Undeclared (ASCII by the standard): many senders put UTF-8 or Latin-1 here regardless.
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("iso8859-1")


def parse_message(data: bytes, encoding_hint: str | None = None) -> Message:
    """Parse one message. ``encoding_hint`` (an MSH-18 name such as ``8859/1``, or a Python codec)
    is what to assume when MSH-18 is empty; without it ASCII, with a UTF-8/Latin-1 fallback.

    Raises MalformedMessage (an HL7Error) carrying the right ack code, table 0357 code, location
    and whatever was parsed; header problems are AR (HL7 v2.5 section 2.9.2.1), content ones AE.
    """
    head = data.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    if not head.startswith(b"MSH") or len(head) < 8:
        raise MalformedMessage(
            "message does not begin with an MSH segment", ack_code="AR", error_code="100", location="MSH"
        )
    seps = _separators(head)
    first = re.split(rb"[\r\n]", head, maxsplit=1)[0]
    partial = Message(_split_segments(first.decode("latin-1"), seps, "iso8859-1"), seps, "iso8859-1")
    charset = partial.charset
    codec = _codec(charset, encoding_hint)
    if codec is None:
        raise MalformedMessage(
            f"character set {charset!r} (MSH-18) is not supported",
            ack_code="AR",
            error_code="103",
            location="MSH^1^18",
            partial=partial,
        )
    text = _decode(head, charset, codec, partial)
    try:
        segments = _split_segments(text, seps, codec)
    except MalformedMessage as exc:
        exc.partial = partial
        raise
    msg = Message(segments, seps, codec)
    if len(msg.segments("MSH")) > 1:
        raise MalformedMessage(
            "more than one MSH segment (batches are not supported)",
            ack_code="AR",
            error_code="100",
            location="MSH^2",
            partial=msg,
        )
    for field, value, what in (
        (9, msg.message_type, "message type"),
        (10, msg.control_id, "control id"),
        (12, msg.version, "version id"),
    ):
        if not value.strip():
            raise MalformedMessage(
                f"MSH-{field} ({what}) is missing",
                ack_code="AR",
                error_code="101",
                location=f"MSH^1^{field}",
                partial=msg,
            )
    if msg.version not in SUPPORTED_VERSIONS:
        raise MalformedMessage(
            f"HL7 version {msg.version!r} is not supported (use 2.3.1 or 2.5)",
            ack_code="AR",
            error_code="203",
            location="MSH^1^12",
            partial=msg,
        )
    return msg


def header_of(data: bytes) -> Message | None:
    """Best effort at the MSH alone, to address an ACK for a message that is too large or broken."""
    first = re.split(rb"[\r\n]", data.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n"), maxsplit=1)[0]
    try:
        return parse_message(first)
    except MalformedMessage as exc:
        return exc.partial


def check_event(msg: Message, supported: Mapping[str, Collection[str]]) -> None:
    """AR 200/201 unless MSH-9 names a supported message type and trigger event."""
    if msg.message_type not in supported:
        raise MalformedMessage(
            f"message type {msg.message_type!r} is not supported",
            ack_code="AR",
            error_code="200",
            location="MSH^1^9^1^1",
            partial=msg,
        )
    if msg.trigger_event not in supported[msg.message_type]:
        raise MalformedMessage(
            f"event {msg.message_type + '^' + msg.trigger_event!r} is not supported",
            ack_code="AR",
            error_code="201",
            location="MSH^1^9^1^2",
            partial=msg,
        )


def new_control_id() -> str:
    return uuid.uuid4().hex[:20]  # MSH-10 is at most 20 characters


def _layout_25(version: str) -> bool:
    """ERR changed shape in 2.5 (ERR-2 location, ERR-3 code, ERR-4 severity)."""
    return tuple(int(p) for p in version.split(".")[:2]) >= (2, 5)


def build_ack(
    msg: Message | None,
    ack_code: str,
    *,
    text: str = "",
    error: HL7Error | None = None,
    sending_app: str = "CLEARINGHOUSE",
    sending_facility: str = "ISN",
    now: datetime | None = None,
    control_id: str | None = None,
) -> bytes:
    """An original-mode ACK for ``msg`` (None: the request was unreadable, so defaults are used).

    The request's separators, version and charset are reused so the sender can read the answer;
    its MSH-3/4 become our MSH-5/6 and its control id goes to MSA-2.
    """
    return build_reply(
        msg,
        ack_code,
        text=text,
        errors=[error] if error else (),
        sending_app=sending_app,
        sending_facility=sending_facility,
        now=now,
        control_id=control_id,
    )


def build_reply(
    msg: Message | None,
    ack_code: str,
    *,
    message_type: str = "",
    text: str = "",
    errors: Sequence[HL7Error] = (),
    segments: Sequence[str] = (),
    sending_app: str = "CLEARINGHOUSE",
    sending_facility: str = "ISN",
    now: datetime | None = None,
    control_id: str | None = None,
    accept_ack_type: str = "",
    application_ack_type: str = "",
) -> bytes:
    """A response to ``msg``: MSH, MSA, one ERR per error, then ``segments`` (already encoded with
    the request's separators, e.g. QAK/QPD/PID of an RSP^K23). ``message_type`` is MSH-9 with the
    request's component separator (default ``ACK^<trigger>^ACK``); ``ack_code`` may be an original
    (AA/AE/AR) or enhanced-mode accept (CA/CE/CR) code. MSH-15/16 are for a response that is itself
    a message in enhanced mode (an application acknowledgement)."""
    seps = msg.separators if msg else Separators()
    h = msg.header if msg else None
    raw = h.raw if h else (lambda _field: "")
    c, fs = seps.component, seps.field
    version = raw(12).split(c)[0] if h and _VERSION.fullmatch(raw(12).split(c)[0]) else DEFAULT_VERSION
    codec = msg.encoding if msg else "ascii"
    when = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S%z")
    text = (text or (errors[0].text if errors else ""))[:1000]
    trigger = escape(msg.trigger_event, seps) if msg else ""
    msh = [
        "MSH",
        seps.encoding_characters,
        escape(sending_app, seps),
        escape(sending_facility, seps),
        raw(3),
        raw(4),
        when,
        "",
        message_type or f"ACK{c}{trigger}{c}ACK",
        escape(control_id or new_control_id(), seps),
        raw(11) or "P",
        version,
    ]
    # MSH-13..17 empty but for the acknowledgement types; MSH-18 as received.
    tail = ["", "", escape(accept_ack_type, seps), escape(application_ack_type, seps), "", raw(18) if h else ""]
    while tail and not tail[-1]:
        tail.pop()
    msh += tail
    out = [fs.join(msh)]
    msa = ["MSA", ack_code, raw(10)]
    new_layout = _layout_25(version)
    if text and not (errors and new_layout):
        msa.append(escape(text, seps))
    out.append(fs.join(msa).rstrip(fs))
    old_layout_reps = []
    for error in errors:
        code = error.error_code
        desc = escape(ERROR_TEXTS.get(code, "Application error"), seps)
        loc = [escape(p, seps) for p in error.location.split("^")] if error.location else []
        if new_layout:
            severity = "W" if ack_code in ("AA", "CA") else "E"
            detail = escape(text if len(errors) == 1 else error.text[:1000], seps)
            err = ["ERR", "", c.join(loc), f"{code}{c}{desc}{c}HL70357", severity, "", "", "", detail]
            out.append(fs.join(err).rstrip(fs))
        else:
            loc = (loc + ["", "", ""])[:3]
            s = seps.subcomponent
            old_layout_reps.append(c.join([*loc, f"{code}{s}{desc}{s}HL70357"]))
    if old_layout_reps:  # 2.3.1: one ERR whose ERR-1 repeats
        out.append(fs.join(["ERR", seps.repetition.join(old_layout_reps)]))
    out.extend(segments)
    return ("\r".join(out) + "\r").encode(codec, "replace")
