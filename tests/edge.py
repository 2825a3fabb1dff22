"""What a test edge and a test PHR do: feed a patient, submit a study with MTOM or inline
documents, find it by RSNA-ID and retrieve it. Built from the real client classes."""

from __future__ import annotations

import hashlib
import io
import uuid
from dataclasses import dataclass
from pathlib import Path

import pydicom
import xds_samples as xs
from lxml import etree
from pydicom.data import get_testdata_file

from clearinghouse.rsna_id import compute_rsna_id, patient_cx
from clearinghouse.soap.client import SoapClient, SoapReply
from clearinghouse.soap.mtom import cid_href, content_id_for
from clearinghouse.xmlsafe import NS, qname

ITI41 = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
ITI43 = "urn:ihe:iti:2007:RetrieveDocumentSet"
ITI18 = "urn:ihe:iti:2007:RegistryStoredQuery"
AFFINITY_OID = "1.3.6.1.4.1.19376.3.840.1.1.1"
REPOSITORY_ID = "1.3.6.1.4.1.21367.2026.1.1"
SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
FAILURE = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"
PARTIAL = "urn:ihe:iti:2007:ResponseStatusType:PartialSuccess"

# Real DICOM objects of different modalities that ship with pydicom.
DICOM_SAMPLES = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm"]


def dicom_bytes(name: str) -> bytes:
    return Path(get_testdata_file(name)).read_bytes()


def new_access_code() -> str:
    alphabet = "ybndrfg8ejkmcpqxot1uwisza345h769"
    raw = "".join(alphabet[b % 32] for b in uuid.uuid4().bytes)[:20]
    return "-".join(raw[i : i + 5] for i in range(0, 20, 5))


def patient_for(access_code: str, dob: str, password: str | None = None) -> str:
    return patient_cx(compute_rsna_id(access_code, dob, password), AFFINITY_OID)


def feed_message(patient_id: str, event: str = "A04", control: str | None = None, version: str = "2.5") -> bytes:
    pid_id, rest = patient_id.split("^^^", 1)
    segments = [
        f"MSH|^~\\&|EDGE|SITE-A|CLEARINGHOUSE|ISN|20261123120000||ADT^{event}^ADT_A01|"
        f"{control or uuid.uuid4().hex[:20]}|P|{version}",
        f"EVN|{event}|20261123120000",
        f"PID|||{pid_id}^^^{rest}||RSNA^ISN",
    ]
    return ("\r".join(segments) + "\r").encode()


@dataclass
class Study:
    patient_id: str
    documents: list[xs.DocSpec]
    contents: dict[str, bytes]  # uniqueId -> bytes

    @property
    def unique_ids(self) -> list[str]:
        return [d.unique_id or "" for d in self.documents]


# formatCode of a plain-text radiology report (IHE RAD format codes) and of a DICOM object: its SOP
# Class UID in the DICOM UID registry, the KOS class being reserved for imaging manifests (XDS-I.b).
FORMAT_TEXT_REPORT = xs.Code("urn:ihe:rad:TEXT", "1.3.6.1.4.1.19376.1.2.3", "Text report")
DICOM_UID_REGISTRY = "1.2.840.10008.2.6.1"


def dicom_format(data: bytes) -> xs.Code:
    sop_class = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPClassUID
    return xs.Code(str(sop_class), DICOM_UID_REGISTRY, "DICOM object")


def study(patient_id: str, *, report: bool = True, samples: list[str] | None = None) -> Study:
    docs, contents = [], {}
    for name in samples if samples is not None else DICOM_SAMPLES:
        data = dicom_bytes(name)
        uid = xs.new_oid()
        docs.append(
            xs.DocSpec(
                unique_id=uid, mime_type="application/dicom", content=data, title=name, format_code=dicom_format(data)
            )
        )
        contents[uid] = data
    if report:
        text = b"FINDINGS: No acute abnormality.\nIMPRESSION: Normal study.\n"
        uid = xs.new_oid()
        docs.append(
            xs.DocSpec(
                unique_id=uid,
                mime_type="text/plain",
                content=text,
                title="Report",
                class_code=xs.CLASS_REPORTS,
                format_code=FORMAT_TEXT_REPORT,
            )
        )
        contents[uid] = text
    return Study(patient_id, docs, contents)


def to_mtom(request: etree._Element) -> list[tuple[str, str, bytes]]:
    """Move each inline xdsb:Document into an MTOM attachment referenced by xop:Include."""
    import base64

    parts = []
    for i, doc in enumerate(request.findall("xdsb:Document", NS), start=1):
        data = base64.b64decode(doc.text or "")
        doc.text = None
        cid = content_id_for(i, "edge.test")
        etree.SubElement(doc, qname("xop", "Include"), nsmap={"xop": NS["xop"]}, href=cid_href(cid))
        parts.append((cid, "application/octet-stream", data))
    return parts


def submit(client: SoapClient, st: Study, *, mtom: bool = True, **kwargs: object) -> SoapReply:
    request = xs.provide_and_register(st.patient_id, st.documents, **kwargs)
    attachments = to_mtom(request) if mtom else None
    return client.call(ITI41, request, attachments=attachments, mtom=mtom)


def find_documents(client: SoapClient, patient_id: str, return_type: str = "LeafClass") -> SoapReply:
    return client.call(ITI18, xs.find_documents(patient_id, return_type=return_type))


def retrieve_request(unique_ids: list[str], repository_id: str = REPOSITORY_ID) -> etree._Element:
    root = etree.Element(qname("xdsb", "RetrieveDocumentSetRequest"), nsmap={"xdsb": NS["xdsb"]})
    for uid in unique_ids:
        dr = etree.SubElement(root, qname("xdsb", "DocumentRequest"))
        etree.SubElement(dr, qname("xdsb", "RepositoryUniqueId")).text = repository_id
        etree.SubElement(dr, qname("xdsb", "DocumentUniqueId")).text = uid
    return root


def retrieve(client: SoapClient, unique_ids: list[str], repository_id: str = REPOSITORY_ID) -> SoapReply:
    return client.call(ITI43, retrieve_request(unique_ids, repository_id))


def retrieved_documents(reply: SoapReply) -> dict[str, bytes]:
    out = {}
    for dr in reply.body.findall("xdsb:DocumentResponse", NS):
        uid = dr.findtext("xdsb:DocumentUniqueId", namespaces=NS)
        inc = dr.find("xdsb:Document/xop:Include", NS)
        assert inc is not None, "ITI-43 response documents must be xop:Include references"
        assert reply.mtom is not None
        out[uid] = reply.mtom.resolve_cid(inc.get("href")).path.read_bytes()
    return out


def errors_of(body: etree._Element) -> list[tuple[str, str]]:
    return [(e.get("errorCode"), e.get("codeContext")) for e in body.iter(qname("rs", "RegistryError"))]


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def slot(obj: etree._Element, name: str) -> list[str]:
    return [v.text for v in obj.findall(f"rim:Slot[@name='{name}']/rim:ValueList/rim:Value", NS)]
