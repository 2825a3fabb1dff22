"""Syslog as ITI-20 carries audit messages: RFC 5424 messages, RFC 5425 octet-counting frames on TLS.

Pure functions: ``parse_header`` reads the RFC 5424 header and says where MSG starts, collecting
what is wrong instead of refusing (an audit repository keeps even a malformed record);
``FrameSplitter`` cuts an octet-counted byte stream into messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

BOM = b"\xef\xbb\xbf"
NILVALUE = "-"
# RFC 5424 section 6.1 field lengths.
MAX_HOSTNAME, MAX_APP_NAME, MAX_PROCID, MAX_MSGID = 255, 48, 128, 32
_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})\Z",
)


@dataclass
class SyslogHeader:
    priority: int | None = None
    version: str = ""
    timestamp: str = ""  # as sent ("" when NILVALUE or missing)
    hostname: str = ""
    app_name: str = ""
    procid: str = ""
    msgid: str = ""
    structured_data: str = ""
    msg_offset: int = 0  # where MSG begins in the message bytes (after SP and any BOM)
    findings: list[str] = field(default_factory=list)

    @property
    def facility(self) -> int | None:
        return None if self.priority is None else self.priority // 8

    @property
    def severity(self) -> int | None:
        return None if self.priority is None else self.priority % 8


def parse_timestamp(text: str) -> datetime | None:
    """An RFC 3339 timestamp as RFC 5424 restricts it (uppercase T and Z, at most 6 fraction digits)."""
    m = _TIMESTAMP.match(text)
    if not m:
        return None
    y, mo, d, h, mi, s, frac, tz = m.groups()
    try:
        when = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), int((frac or ".0")[1:].ljust(6, "0")))
    except ValueError:
        return None
    if tz == "Z":
        return when.replace(tzinfo=UTC)
    sign = 1 if tz[0] == "+" else -1
    from datetime import timedelta, timezone

    offset = timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
    if offset > timedelta(hours=23, minutes=59):
        return None
    return when.replace(tzinfo=timezone(sign * offset)).astimezone(UTC)


def _token(data: bytes, pos: int, name: str, limit: int, h: SyslogHeader) -> tuple[str, int]:
    end = data.find(b" ", pos)
    if end < 0:
        h.findings.append(f"syslog header ends before {name}")
        return "", len(data)
    raw = data[pos:end]
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        text = raw.decode("ascii", "replace")
        h.findings.append(f"syslog {name} is not US-ASCII")
    if not text:
        h.findings.append(f"syslog {name} is empty (two spaces in the header)")
    elif len(text) > limit:
        h.findings.append(f"syslog {name} is longer than {limit} characters")
    elif any(not 33 <= ord(c) <= 126 for c in text):
        h.findings.append(f"syslog {name} holds characters outside PRINTUSASCII")
    return ("" if text == NILVALUE else text), end + 1


def _structured_data(data: bytes, pos: int, h: SyslogHeader) -> int:
    """Skip STRUCTURED-DATA (NILVALUE or [SD-ELEMENT]...), honouring escapes inside PARAM-VALUEs."""
    if data[pos : pos + 1] == b"-":
        h.structured_data = ""
        return pos + 1
    if data[pos : pos + 1] != b"[":
        h.findings.append("syslog STRUCTURED-DATA is neither '-' nor an SD-ELEMENT")
        end = data.find(b" ", pos)
        return len(data) if end < 0 else end
    start, i, n = pos, pos, len(data)
    while i < n and data[i : i + 1] == b"[":
        i += 1
        in_value = False
        while i < n:
            c = data[i : i + 1]
            if in_value:
                if c == b"\\":
                    i += 2
                    continue
                if c == b'"':
                    in_value = False
            elif c == b'"':
                in_value = True
            elif c == b"]":
                break
            i += 1
        if i >= n:
            h.findings.append("syslog SD-ELEMENT is not closed")
            h.structured_data = data[start:].decode("utf-8", "replace")
            return n
        i += 1
    h.structured_data = data[start:i].decode("utf-8", "replace")
    return i


# A well-formed header without structured data, the way ITI-20 senders write it: matched in one step.
_FAST = re.compile(
    rb"<(0|[1-9]\d{0,2})>1 (-|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)) ([\x21-\x7e]{1,255}) "
    rb"([\x21-\x7e]{1,48}) ([\x21-\x7e]{1,128}) ([\x21-\x7e]{1,32}) -(?: |\Z)"
)


def parse_header(data: bytes) -> SyslogHeader:
    """The RFC 5424 header of ``data``; ``msg_offset`` points at MSG. Problems go to ``findings``."""
    m = _FAST.match(data)
    if m and int(m.group(1)) <= 191:
        pri, stamp, host, app, procid, msgid = (g.decode("ascii") for g in m.groups())
        h = SyslogHeader(int(pri), "1", "" if stamp == NILVALUE else stamp)
        h.hostname, h.app_name, h.procid, h.msgid = ("" if v == NILVALUE else v for v in (host, app, procid, msgid))
        if h.timestamp and not _valid_fast_timestamp(h.timestamp):
            h.findings.append(f"syslog TIMESTAMP {h.timestamp!r} is not an RFC 5424 timestamp")
        h.msg_offset = _msg_start(data, m.end())
        return h
    return _parse_header_slowly(data)


def _valid_fast_timestamp(text: str) -> bool:
    # _FAST already fixed the shape; fromisoformat checks the values (month 13, second 61, ...).
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def _parse_header_slowly(data: bytes) -> SyslogHeader:
    h = SyslogHeader()
    if not data.startswith(b"<"):
        h.findings.append("not an RFC 5424 message: no <PRI> at the start")
        h.msg_offset = _msg_start(data, 0)
        return h
    close = data.find(b">", 1, 5)
    pri = data[1:close] if close > 0 else b""
    if not pri.isdigit() or (len(pri) > 1 and pri.startswith(b"0")) or int(pri) > 191:
        h.findings.append("syslog PRI is not a number from 0 to 191")
        h.msg_offset = _msg_start(data, 0)
        return h
    h.priority = int(pri)
    pos = close + 1
    end = data.find(b" ", pos)
    if end < 0:
        h.findings.append("syslog header ends after PRI")
        h.msg_offset = len(data)
        return h
    h.version = data[pos:end].decode("ascii", "replace")
    if h.version != "1":
        h.findings.append(f"syslog VERSION is {h.version!r}, not 1 (RFC 5424)")
    pos = end + 1
    h.timestamp, pos = _token(data, pos, "TIMESTAMP", 64, h)
    if h.timestamp and parse_timestamp(h.timestamp) is None:
        h.findings.append(f"syslog TIMESTAMP {h.timestamp!r} is not an RFC 5424 timestamp")
    h.hostname, pos = _token(data, pos, "HOSTNAME", MAX_HOSTNAME, h)
    h.app_name, pos = _token(data, pos, "APP-NAME", MAX_APP_NAME, h)
    h.procid, pos = _token(data, pos, "PROCID", MAX_PROCID, h)
    h.msgid, pos = _token(data, pos, "MSGID", MAX_MSGID, h)
    if pos >= len(data):
        h.findings.append("syslog header ends before STRUCTURED-DATA")
        h.msg_offset = len(data)
        return h
    pos = _structured_data(data, pos, h)
    if pos < len(data) and data[pos : pos + 1] != b" ":
        h.findings.append("no space between STRUCTURED-DATA and MSG")
    h.msg_offset = _msg_start(data, pos + 1 if data[pos : pos + 1] == b" " else pos)
    return h


def _msg_start(data: bytes, pos: int) -> int:
    if not data.startswith(b"<", pos):
        # Without a usable header, the audit XML (if any) starts at its first '<'.
        xml = data.find(b"<?xml", pos)
        if xml < 0:
            xml = data.find(b"<AuditMessage", pos)
        if xml >= 0 and pos == 0:
            pos = xml
    return pos + len(BOM) if data.startswith(BOM, pos) else pos


class FramingError(ValueError):
    """The stream is not RFC 5425 octet-counting framing; ``garbage`` holds the bytes in question."""

    def __init__(self, message: str, garbage: bytes) -> None:
        super().__init__(message)
        self.garbage = garbage


@dataclass
class Frame:
    data: bytes
    declared_length: int  # MSG-LEN as sent; > len(data) when the frame was truncated to the limit
    broken: str = ""  # set on the last frame of a stream that stopped being octet-counted: why


class FrameSplitter:
    """Cuts an RFC 5425 stream (MSG-LEN SP SYSLOG-MSG ...) into frames. A frame longer than
    ``max_bytes`` is kept truncated to ``max_bytes`` (flagged by its declared length) and the rest of
    it skipped, so one oversized record neither exhausts memory nor desynchronises the stream."""

    MAX_LENGTH_DIGITS = 10

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._skip = 0
        self._partial: Frame | None = None  # an oversized frame whose kept prefix is complete
        self._done: list[Frame] = []
        self.broken = False

    @property
    def pending(self) -> int:
        """Bytes held for a frame not yet complete."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        """Frames completed by ``data``. When the stream stops being octet-counted, the rest of what was
        received becomes one last frame marked ``broken`` (the stream cannot be resynchronised)."""
        try:
            return self._feed(data)
        except FramingError as exc:
            self.broken = True
            return [*self._done, Frame(exc.garbage, len(exc.garbage), str(exc))]

    def _feed(self, data: bytes) -> list[Frame]:
        out: list[Frame] = []
        self._done = out
        buf = self._buf
        buf += data
        pos = 0
        n = len(buf)
        while pos < n:
            if self._skip:
                take = min(self._skip, n - pos)
                self._skip -= take
                pos += take
                if not self._skip and self._partial is not None:
                    out.append(self._partial)
                    self._partial = None
                continue
            sp = buf.find(b" ", pos, pos + self.MAX_LENGTH_DIGITS + 1)
            if sp < 0:
                if n - pos > self.MAX_LENGTH_DIGITS or not buf[pos:n].isdigit():
                    garbage = bytes(buf[pos:])
                    del buf[:]
                    raise FramingError("not RFC 5425 octet-counting framing (expected MSG-LEN SP)", garbage)
                break
            digits = buf[pos:sp]
            if not digits.isdigit() or digits.startswith(b"0"):
                garbage = bytes(buf[pos:])
                del buf[:]
                raise FramingError(f"invalid MSG-LEN {bytes(digits[:20])!r}: not RFC 5425 octet-counting", garbage)
            length = int(digits)
            start = sp + 1
            if length > self.max_bytes:
                if n - start < self.max_bytes:
                    break
                self._partial = Frame(bytes(buf[start : start + self.max_bytes]), length)
                self._skip = length - self.max_bytes
                pos = start + self.max_bytes
                continue
            if n - start < length:
                break
            out.append(Frame(bytes(buf[start : start + length]), length))
            pos = start + length
        del buf[:pos]
        return out

    def close(self) -> Frame | None:
        """At the end of the stream: what was held of an unfinished frame (None when there is none)."""
        if self._partial is not None:
            frame, self._partial = self._partial, None
            self._skip = 0
            return frame
        if not self._buf:
            return None
        data = bytes(self._buf)
        del self._buf[:]
        sp = data.find(b" ")
        if 0 < sp <= self.MAX_LENGTH_DIGITS and data[:sp].isdigit():
            return Frame(data[sp + 1 :], int(data[:sp]))
        return Frame(data, len(data))
