"""HL7 v2 parsing, escaping and ACK building (clearinghouse.hl7)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from clearinghouse import hl7
from clearinghouse.errors import HL7Error

OID = "1.3.6.1.4.1.19376.3.840.1.1.1"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def adt(version: str = "2.3.1", event: str = "A01", *, pid: str | None = None, extra_msh: str = "") -> bytes:
    pid = pid if pid is not None else f"PID|||RSNA123^^^&{OID}&ISO~MRN7^^^HOSP||DOE^JOHN||19700101|M"
    return (
        f"MSH|^~\\&|SRC|SITE|CH|ISN|20260101120000||ADT^{event}^ADT_A01|CTRL1|P|{version}{extra_msh}\r"
        f"EVN|{event}|20260101120000\r{pid}\r"
    ).encode()


def segments(ack: bytes) -> list[list[str]]:
    return [s.split("|") for s in ack.decode().split("\r") if s]


class TestParse:
    def test_header_fields(self):
        msg = hl7.parse_message(adt())
        assert (msg.message_type, msg.trigger_event, msg.message_structure) == ("ADT", "A01", "ADT_A01")
        assert (msg.control_id, msg.version, msg.processing_id) == ("CTRL1", "2.3.1", "P")
        assert (msg.sending_application, msg.sending_facility) == ("SRC", "SITE")
        assert (msg.receiving_application, msg.receiving_facility) == ("CH", "ISN")
        assert msg.header.get(1) == "|" and msg.header.get(2) == "^~\\&"

    def test_fields_components_repetitions_subcomponents(self):
        msg = hl7.parse_message(adt("2.5"))
        assert msg.get("PID", 3) == "RSNA123"
        assert msg.get("PID", 3, 4, 1, 2) == OID
        assert msg.get("PID", 3, 4, 1, 3) == "ISO"
        assert msg.get("PID", 3, 1, 2) == "MRN7"
        assert msg.get("PID", 3, 4, 2) == "HOSP"
        assert msg.segment("PID").repetition_count(3) == 2
        assert msg.get("PID", 3, 1, 3) == "" and msg.get("PID", 99) == "" and msg.get("ZZZ", 1) == ""
        assert [s.name for s in msg.segments()] == ["MSH", "EVN", "PID"]

    @pytest.mark.parametrize("sep", [b"\r", b"\r\n", b"\n"])
    def test_segment_terminators(self, sep):
        msg = hl7.parse_message(adt().replace(b"\r", sep))
        assert [s.name for s in msg.segments()] == ["MSH", "EVN", "PID"]

    def test_custom_separators(self):
        data = (
            b"MSH#$*@%#SRC#SITE#CH#ISN#20260101##ADT$A04#C9#P#2.5\rPID###ID1$$$%1.2.3%ISO*ID2$$$%4.5.6%ISO##A@S@B$C\r"
        )
        msg = hl7.parse_message(data)
        assert msg.separators == hl7.Separators("#", "$", "*", "@", "%")
        assert (msg.message_type, msg.trigger_event, msg.control_id) == ("ADT", "A04", "C9")
        assert msg.get("PID", 3, 4, 2, 2) == "4.5.6"
        assert msg.get("PID", 5) == "A$B"  # @S@ is the escaped component separator

    def test_escape_sequences(self):
        msg = hl7.parse_message(adt(pid=r"PID|||X||A\F\B\S\C\T\D\R\E\E\F|\X4142\|\H\bold\N\|open\F"))
        assert msg.get("PID", 5) == "A|B^C&D~E\\F"
        assert msg.get("PID", 6) == "AB"
        assert msg.get("PID", 7) == r"\H\bold\N\ "[:-1]  # unknown escapes kept verbatim
        assert msg.get("PID", 8) == "open\\F"  # unterminated escape is literal

    def test_escape_round_trip(self):
        seps = hl7.Separators()
        text = "a|b^c&d~e\\f\rg\x1ch"
        escaped = hl7.escape(text, seps)
        assert not set("|^&~\r\x1c") & set(escaped)
        assert hl7.unescape(escaped, seps) == text

    def test_escape_leaves_plain_values_alone_and_honours_the_message_separators(self):
        default, odd = hl7.Separators(), hl7.Separators(field="#", component="@", repetition="*", subcomponent="$")
        for plain in ("M12345", "MÜLLER ZOË", "1.2.840.114350", ""):
            assert hl7.escape(plain, default) == plain and hl7.escape(plain, odd) == plain
        # What is plain under one set of separators is a delimiter under another, and the reverse.
        assert hl7.escape("a#b@c*d$e", odd) == r"a\F\b\S\c\R\d\T\e"
        assert hl7.escape("a|b^c", odd) == "a|b^c"
        assert hl7.escape("tab\there\x7f", default) == "tab\\X09\\here\\X7F\\"

    def test_charset_utf8(self):
        data = adt("2.5", pid="PID|||X||MÜLLER^ZOË", extra_msh="||||||UNICODE UTF-8")
        msg = hl7.parse_message(data)
        assert (msg.charset, msg.encoding) == ("UNICODE UTF-8", "utf-8")
        assert msg.get("PID", 5, 2) == "ZOË"

    def test_charset_latin1(self):
        data = adt("2.3.1", pid="PID|||X||MÜLLER", extra_msh="||||||8859/1").decode().encode("latin-1")
        msg = hl7.parse_message(data)
        assert msg.encoding == "iso8859-1" and msg.get("PID", 5) == "MÜLLER"

    def test_undeclared_charset_defaults_to_ascii_but_tolerates_utf8(self):
        assert hl7.parse_message(adt()).encoding == "ascii"
        assert hl7.parse_message(adt(pid="PID|||X||ZOË")).get("PID", 5) == "ZOË"
        assert hl7.parse_message(adt(pid="PID|||X||Z").replace(b"Z", b"\xe9"), "8859/1").get("PID", 5) == "é"

    def test_declared_charset_violated(self):
        data = adt("2.5", pid="PID|||X||Z", extra_msh="||||||ASCII").replace(b"||Z", b"||\xff")
        with pytest.raises(hl7.MalformedMessage) as exc:
            hl7.parse_message(data)
        assert (exc.value.ack_code, exc.value.error_code, exc.value.location) == ("AR", "102", "MSH^1^18")
        assert exc.value.partial.control_id == "CTRL1"

    def test_unknown_charset(self):
        with pytest.raises(hl7.MalformedMessage) as exc:
            hl7.parse_message(adt("2.5", extra_msh="||||||EBCDIC"))
        assert (exc.value.ack_code, exc.value.error_code) == ("AR", "103")

    def test_leading_whitespace_and_bom(self):
        assert hl7.parse_message(b"\xef\xbb\xbf\r\n" + adt()).control_id == "CTRL1"


class TestMalformed:
    @pytest.mark.parametrize(
        "data, code, location",
        [
            (b"", "100", "MSH"),
            (b"PID|||X\r", "100", "MSH"),
            (b"EVN|A01\rMSH|^~\\&|A|B|C|D|2026||ADT^A01|1|P|2.5\r", "100", "MSH"),
            (b"MSH|^~|A|B\r", "102", "MSH^1^2"),
            (b"MSH|^~\\^|A|B\r", "102", "MSH^1^2"),
            (b"MSHA^~\\&|A\r", "102", "MSH^1^2"),
            (b"MSH|^~\\&|A|B|C|D|2026|||1|P|2.5\r", "101", "MSH^1^9"),
            (b"MSH|^~\\&|A|B|C|D|2026||ADT^A01||P|2.5\r", "101", "MSH^1^10"),
            (b"MSH|^~\\&|A|B|C|D|2026||ADT^A01|1|P\r", "101", "MSH^1^12"),
            (b"MSH|^~\\&|A|B|C|D|2026||ADT^A01|1|P|2.4\r", "203", "MSH^1^12"),
            (b"MSH|^~\\&|A|B|C|D|2026||ADT^A01|1|P|2.5\rMSH|^~\\&|A\r", "100", "MSH^2"),
        ],
    )
    def test_header_errors_are_rejects(self, data, code, location):
        with pytest.raises(hl7.MalformedMessage) as exc:
            hl7.parse_message(data)
        assert isinstance(exc.value, HL7Error)
        assert (exc.value.ack_code, exc.value.error_code, exc.value.location) == ("AR", code, location)

    def test_partial_header_kept_for_the_ack(self):
        with pytest.raises(hl7.MalformedMessage) as exc:
            hl7.parse_message(b"MSH|^~\\&|SRC|SITE|C|D|2026||ADT^A01|42|P|9.9\r")
        ack = segments(hl7.build_ack(exc.value.partial, "AR", error=exc.value))
        assert ack[1][:3] == ["MSA", "AR", "42"] and ack[0][4] == "SRC"

    def test_bad_segment_is_an_error_in_content(self):
        with pytest.raises(hl7.MalformedMessage) as exc:
            hl7.parse_message(adt() + b"not a segment\r")
        assert (exc.value.ack_code, exc.value.error_code) == ("AE", "100")
        assert exc.value.partial.control_id == "CTRL1"

    def test_check_event(self):
        msg = hl7.parse_message(adt(event="A03"))
        with pytest.raises(hl7.MalformedMessage) as exc:
            hl7.check_event(msg, {"ADT": {"A01"}})
        assert (exc.value.ack_code, exc.value.error_code) == ("AR", "201")
        with pytest.raises(hl7.MalformedMessage) as exc:
            hl7.check_event(msg, {"ORM": {"O01"}})
        assert (exc.value.ack_code, exc.value.error_code) == ("AR", "200")
        hl7.check_event(msg, {"ADT": {"A03"}})

    def test_header_of(self):
        assert hl7.header_of(adt() + b"garbage" * 100).control_id == "CTRL1"
        assert hl7.header_of(b"\x00\x01junk") is None


class TestAck:
    def test_accept_231(self):
        ack = hl7.build_ack(hl7.parse_message(adt()), "AA", now=NOW, control_id="ACK1")
        assert ack.endswith(b"\r")
        msh, msa = segments(ack)
        assert msh == [
            "MSH",
            "^~\\&",
            "CLEARINGHOUSE",
            "ISN",
            "SRC",
            "SITE",
            "20260102030405+0000",
            "",
            "ACK^A01^ACK",
            "ACK1",
            "P",
            "2.3.1",
        ]
        assert msa == ["MSA", "AA", "CTRL1"]

    def test_error_231(self):
        err = HL7Error("no identifier in the affinity domain", error_code="204", location="PID^1^3")
        msh, msa, er = segments(hl7.build_ack(hl7.parse_message(adt()), "AE", error=err))
        assert msa == ["MSA", "AE", "CTRL1", "no identifier in the affinity domain"]
        assert er == ["ERR", "PID^1^3^204&Unknown key identifier&HL70357"]

    def test_error_25(self):
        err = HL7Error("no identifier in the affinity domain", error_code="204", location="PID^1^3")
        msh, msa, er = segments(hl7.build_ack(hl7.parse_message(adt("2.5")), "AE", error=err))
        assert msh[11] == "2.5" and msa == ["MSA", "AE", "CTRL1"]
        assert er == [
            "ERR",
            "",
            "PID^1^3",
            "204^Unknown key identifier^HL70357",
            "E",
            "",
            "",
            "",
            "no identifier in the affinity domain",
        ]

    def test_text_is_escaped(self):
        err = HL7Error("bad | value ^ with\rCR", ack_code="AR", error_code="207")
        ack = hl7.build_ack(hl7.parse_message(adt()), "AR", error=err)
        msa = segments(ack)[1]
        assert len(msa) == 4 and msa[3] == "bad \\F\\ value \\S\\ with\\X0D\\CR"
        assert hl7.parse_message(ack).get("MSA", 3) == "bad | value ^ with\rCR"

    def test_uses_request_separators_and_charset(self):
        data = b"MSH#$*@%#SRC#SITE#CH#ISN#2026##ADT$A08#C9#T#2.5######8859/1\rPID###X\r"
        req = hl7.parse_message(data)
        err = HL7Error("Zoë # $", error_code="207")
        ack = hl7.build_ack(req, "AE", error=err, now=NOW)
        parsed = hl7.parse_message(ack)
        assert parsed.separators == req.separators
        assert (parsed.message_type, parsed.trigger_event, parsed.processing_id) == ("ACK", "A08", "T")
        assert parsed.charset == "8859/1" and "Zo\xeb".encode("latin-1") in ack
        assert parsed.get("ERR", 8) == "Zoë # $" and parsed.get("ERR", 3, 1) == "207"

    def test_unparseable_request(self):
        err = HL7Error("message does not begin with an MSH segment", ack_code="AR", error_code="100", location="MSH")
        ack = hl7.parse_message(hl7.build_ack(None, "AR", error=err))
        assert (ack.version, ack.message_type, ack.receiving_application) == ("2.5", "ACK", "")
        assert ack.get("MSA", 1) == "AR" and ack.get("MSA", 2) == ""
        assert ack.get("ERR", 3) == "100" and ack.get("ERR", 2) == "MSH"

    def test_new_control_ids(self):
        req = hl7.parse_message(adt())
        a, b = (hl7.parse_message(hl7.build_ack(req, "AA")).control_id for _ in range(2))
        assert a != b and len(a) <= 20
