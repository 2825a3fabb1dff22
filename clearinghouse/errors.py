"""Typed errors and their mapping to IHE error codes, in one place.

Actors raise these; the SOAP layer turns them into an ebRS RegistryResponse with a
RegistryErrorList (ITI TF-3 4.2.4.1), the HL7 layer into an ACK with an ERR segment.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SEVERITY_ERROR = "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error"
SEVERITY_WARNING = "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Warning"


@dataclass
class RegistryErrorItem:
    """One RegistryError: the IHE errorCode, the codeContext that says what is wrong, and where."""

    code: str
    context: str
    location: str = ""
    severity: str = SEVERITY_ERROR


class ClearinghouseError(Exception):
    """Base of every error the clearinghouse reports to a peer."""


class XdsError(ClearinghouseError):
    """An error answered as a RegistryResponse (status Failure) carrying one or more RegistryErrors."""

    code = "XDSRegistryError"

    def __init__(self, context: str, location: str = "", *, code: str | None = None) -> None:
        super().__init__(context)
        self.items = [RegistryErrorItem(code or self.code, context, location)]

    @classmethod
    def many(cls, items: list[RegistryErrorItem]) -> XdsError:
        err = cls(items[0].context, items[0].location, code=items[0].code)
        err.items = list(items)
        return err


class XDSRegistryError(XdsError):
    code = "XDSRegistryError"


class XDSRepositoryError(XdsError):
    code = "XDSRepositoryError"


class XDSRegistryMetadataError(XdsError):
    code = "XDSRegistryMetadataError"


class XDSRepositoryMetadataError(XdsError):
    code = "XDSRepositoryMetadataError"


class XDSUnknownPatientId(XdsError):
    code = "XDSUnknownPatientId"


class XDSPatientIdDoesNotMatch(XdsError):
    code = "XDSPatientIdDoesNotMatch"


class XDSRegistryDuplicateUniqueIdInMessage(XdsError):
    code = "XDSRegistryDuplicateUniqueIdInMessage"


class XDSRepositoryDuplicateUniqueIdInMessage(XdsError):
    code = "XDSRepositoryDuplicateUniqueIdInMessage"


class XDSDuplicateUniqueIdInRegistry(XdsError):
    code = "XDSDuplicateUniqueIdInRegistry"


class XDSNonIdenticalHash(XdsError):
    code = "XDSNonIdenticalHash"


class XDSNonIdenticalSize(XdsError):
    code = "XDSNonIdenticalSize"


class XDSMissingDocument(XdsError):
    code = "XDSMissingDocument"


class XDSMissingDocumentMetadata(XdsError):
    code = "XDSMissingDocumentMetadata"


class XDSUnknownRepositoryId(XdsError):
    code = "XDSUnknownRepositoryId"


class XDSStoredQueryParamNumber(XdsError):
    code = "XDSStoredQueryParamNumber"


class XDSUnknownStoredQuery(XdsError):
    code = "XDSUnknownStoredQuery"


class XDSTooManyResults(XdsError):
    code = "XDSTooManyResults"


class XDSResultNotSinglePatient(XdsError):
    code = "XDSResultNotSinglePatient"


class XDSUnknownCommunity(XdsError):
    code = "XDSUnknownCommunity"


class XDSRegistryNotAvailable(XdsError):
    code = "XDSRegistryNotAvailable"


class XDSRegistryBusy(XdsError):
    code = "XDSRegistryBusy"


class UnresolvedReferenceException(XdsError):
    code = "UnresolvedReferenceException"


class AccessDenied(ClearinghouseError):
    """The authenticated peer is not allowed this transaction (answered as a SOAP Sender fault / HL7 AR)."""

    def __init__(self, subject: str, transaction: str, needed_role: str) -> None:
        super().__init__(f"{subject or 'unknown peer'} may not use {transaction}: role {needed_role!r} required")
        self.subject = subject
        self.transaction = transaction
        self.needed_role = needed_role


@dataclass
class SoapFaultError(ClearinghouseError):
    """A request so broken it gets a SOAP 1.2 Fault instead of a RegistryResponse.

    ``code`` is Sender or Receiver; ``subcode`` a qualified name such as ``wsa:ActionNotSupported``.
    """

    reason: str
    code: str = "Sender"
    subcode: str = ""
    subcode_ns: str = ""
    http_status: int = 400
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.reason)


class HL7Error(ClearinghouseError):
    """A problem with an HL7 v2 message: ``ack_code`` AE or AR, ``error_code`` from HL7 table 0357,
    ``location`` an ERR-2 location such as ``PID^1^3``."""

    def __init__(self, text: str, *, ack_code: str = "AE", error_code: str = "207", location: str = "") -> None:
        super().__init__(text)
        self.text = text
        self.ack_code = ack_code
        self.error_code = error_code
        self.location = location
