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


class XDSDocumentUniqueIdError(XdsError):
    """The document with this uniqueId is not available (ITI-43, ITI-86): never held, or removed."""

    code = "XDSDocumentUniqueIdError"


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


class XDSStoredQueryMissingParam(XdsError):
    code = "XDSStoredQueryMissingParam"


class XDSRegistryOutOfResources(XdsError):
    code = "XDSRegistryOutOfResources"


class XDSRepositoryBusy(XdsError):
    code = "XDSRepositoryBusy"


class XDSRepositoryOutOfResources(XdsError):
    code = "XDSRepositoryOutOfResources"


class XDSRegistryDeprecatedDocumentError(XdsError):
    """An association of the submission references a Deprecated DocumentEntry (ITI TF-3 4.2.4.1)."""

    code = "XDSRegistryDeprecatedDocumentError"


# ITI-57 Update Document Set (XDS Metadata Update, ITI TF-2b 3.57.4.1.3.5).
class XDSMetadataUpdateError(XdsError):
    code = "XDSMetadataUpdateError"


class XDSMetadataVersionError(XdsError):
    code = "XDSMetadataVersionError"


class XDSMetadataUpdateOperationError(XdsError):
    code = "XDSMetadataUpdateOperationError"


class XDSPatientIDReconciliationError(XdsError):
    code = "XDSPatientIDReconciliationError"


# ITI-62 Delete Document Set (Remove Metadata, ITI TF-2b 3.62.4.1.3).
class ReferencesExistException(XdsError):
    code = "ReferencesExistException"


class XDSUnreferencedObjectException(XdsError):
    code = "XDSUnreferencedObjectException"


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


class PixError(HL7Error):
    """A PIX Manager refusal and its answer in each of its protocols: the HL7 v2 acknowledgement code
    and table 0357 code (HL7 v3 acknowledgementDetail carries the same code, as ITI-45 does for 204),
    and the PIXm (ITI-83) HTTP status with its FHIR issue type. ``location`` is an ERR-2 location."""

    error_code_default = "207"
    http_status = 400
    fhir_code = "invalid"
    # ITI-104 (a FHIR conditional update or delete) answers as FHIR R4 http.html says for update:
    # 422 when the resource breaks the server's rules, 400 when it cannot be read or lacks what is required.
    fhir_write_status = 422

    def __init__(self, text: str, *, location: str = "", ack_code: str = "AE") -> None:
        super().__init__(text, ack_code=ack_code, error_code=self.error_code_default, location=location)


class PixUnknownDomain(PixError):
    """An assigning authority that is not one of the configured Patient Identification Domains
    (ITI-9 case 4, ITI-83 "sourceIdentifier Assigning Authority not found")."""

    error_code_default = "204"
    fhir_code = "code-invalid"


class PixUnknownTargetDomain(PixError):
    """A requested domain (QPD-4, DataSource, targetSystem) that is not configured (ITI-9/45 case 5,
    ITI-83 "targetSystem not found", HTTP 403)."""

    error_code_default = "204"
    http_status = 403
    fhir_code = "code-invalid"


class PixUnknownPatientId(PixError):
    """An identifier of a known domain that the manager does not hold, or that a merge retired
    (ITI-9 case 3, ITI-45 case 4, ITI-83 HTTP 404)."""

    error_code_default = "204"
    http_status = 404
    fhir_code = "not-found"


class PixMissingField(PixError):
    error_code_default = "101"
    fhir_code = "required"
    fhir_write_status = 400


class PixMalformedResource(PixError):
    """An ITI-104 request whose body or parameters cannot be read as a FHIR R4 Patient update (not JSON
    or XML, another resource type, an element of the wrong type): HTTP 400, issue type ``structure``."""

    error_code_default = "102"
    fhir_code = "structure"
    fhir_write_status = 400


class PixInvalidField(PixError):
    error_code_default = "102"


class PixTableValueNotFound(PixError):
    error_code_default = "103"
    fhir_code = "code-invalid"


class PixDuplicateControlId(PixError):
    """A message control id this sender already used for a different message."""

    error_code_default = "205"
    http_status = 409
    fhir_code = "duplicate"


class PixNotDomainSource(PixError):
    """Identifiers of a domain fed by a participant that is not that domain's configured Patient
    Identity Source (ITI TF-2a 3.8.4.1.3: one source per domain)."""

    http_status = 403
    fhir_code = "forbidden"
    fhir_write_status = 403

    def __init__(self, text: str, *, location: str = "") -> None:
        super().__init__(text, location=location, ack_code="AR")
