"""HL7 v2 messages the PIX Manager sends: ITI-10 ADT^A31 to subscribers, and the ITI-8 feed that
tells the registry about new affinity-domain identifiers (ADT^A01/A04/A05/A08) and their merges
(ADT^A04 of the prior one, then ADT^A40)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from clearinghouse import hl7
from pix_manager.identifiers import Domain, Identifier, PixConfig, format_cx, sort_for_output

SEPS = hl7.Separators()
SENDING_APPLICATION = "ISN-PIX-MANAGER"
SENDING_FACILITY = "ISN"
# ITI-9 PID-5: no name (first repetition empty), then a name whose only value is type S, "coded
# pseudo-name to assure anonymity", so that no domain's name for the patient is ever passed on.
PSEUDO_NAME = f"{SEPS.repetition}{SEPS.component * 6}S"


def _timestamp(now: datetime | None) -> str:
    return (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S%z")


def _msh(message_type: str, control_id: str, version: str, receiving: tuple[str, str], now: datetime | None) -> str:
    return SEPS.field.join(
        [
            "MSH",
            SEPS.encoding_characters,
            SENDING_APPLICATION,
            SENDING_FACILITY,
            hl7.escape(receiving[0], SEPS),
            hl7.escape(receiving[1], SEPS),
            _timestamp(now),
            "",
            message_type,
            control_id,
            "P",
            version,
        ]
    )


def _join(segments: Sequence[str]) -> bytes:
    text = "\r".join(segments) + "\r"
    if text.isascii():
        return text.encode("ascii")
    # Identifiers outside ASCII: declare UTF-8 in MSH-18 (MSH-13..17 empty) so the receiver decodes them.
    head, _, rest = text.partition("\r")
    return (head + SEPS.field * 6 + "UNICODE UTF-8\r" + rest).encode("utf-8")


def pid3(config: PixConfig, identifiers: Sequence[Identifier]) -> str:
    return SEPS.repetition.join(
        format_cx(config.by_id[i.domain_id], i.value, SEPS) for i in sort_for_output(config, identifiers)
    )


def update_notification(
    config: PixConfig,
    identifiers: Sequence[Identifier],
    *,
    receiving: tuple[str, str],
    control_id: str | None = None,
    now: datetime | None = None,
) -> bytes:
    """ITI-10 (ITI TF-2a 3.10.4.1.2): ADT^A31^ADT_A05, v2.5, PID-3 every identifier of the patient in
    the consumer's domains, PID-5 a single space, PV1-2 N (no visit)."""
    control_id = control_id or hl7.new_control_id()
    return _join(
        [
            _msh(f"ADT{SEPS.component}A31{SEPS.component}ADT_A05", control_id, "2.5", receiving, now),
            f"EVN|A31|{_timestamp(now)}",
            f"PID|||{pid3(config, identifiers)}|| ",
            "PV1||N",
        ]
    )


def registry_register(
    domain: Domain, values: Sequence[str], *, event: str = "A04", now: datetime | None = None
) -> bytes:
    """ITI-8 ADT^A01/A04/A05/A08 (v2.3.1) making affinity-domain identifiers known to the registry:
    PID-3 only the affinity domain's identifiers (the only ones the registry files documents under,
    ITI TF-2a 3.8.4.1.3), PID-5 the pseudo-name: no domain's demographics are passed on."""
    pid3 = SEPS.repetition.join(format_cx(domain, value, SEPS) for value in values)
    return _join(
        [
            _msh(f"ADT{SEPS.component}{event}{SEPS.component}ADT_A01", hl7.new_control_id(), "2.3.1", _REGISTRY, now),
            f"EVN|{event}|{_timestamp(now)}",
            f"PID|||{pid3}||{PSEUDO_NAME}",
            "PV1||N",
        ]
    )


def registry_merge(domain: Domain, surviving: str, prior: str, *, now: datetime | None = None) -> bytes:
    """ITI-8 ADT^A40^ADT_A39 (v2.3.1): the registry merges ``prior`` into ``surviving``."""
    return _join(
        [
            _msh(f"ADT{SEPS.component}A40{SEPS.component}ADT_A39", hl7.new_control_id(), "2.3.1", _REGISTRY, now),
            f"EVN|A40|{_timestamp(now)}",
            f"PID|||{format_cx(domain, surviving, SEPS)}||{PSEUDO_NAME}",
            f"MRG|{format_cx(domain, prior, SEPS)}",
        ]
    )


_REGISTRY = ("XDS-REGISTRY", "ISN")
