"""XDS metadata parsing and id resolution (registry.metadata), the sample builder, and the ebRS
responses of registry.api, checked against the official OASIS schemas."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from lxml import etree

from clearinghouse.errors import RegistryErrorItem, XdsError, XDSRegistryMetadataError
from clearinghouse.xmlsafe import qname
from registry import api
from registry import metadata as md
from tests import xds_samples as xs

SCHEMAS = Path(__file__).resolve().parents[2] / "shared" / "schemas" / "ebRS"


@pytest.fixture(scope="module")
def lcm_schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(SCHEMAS / "lcm.xsd")))


@pytest.fixture(scope="module")
def rs_schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(SCHEMAS / "rs.xsd")))


@pytest.fixture(scope="module")
def query_schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(SCHEMAS / "query.xsd")))


def assert_valid(schema: etree.XMLSchema, element: etree._Element) -> None:
    assert schema.validate(element), schema.error_log


# A submission shaped like real edge traffic: symbolic ids, the SubmissionSet marked by a
# top-level Classification, a document in a new folder, and an ObjectRef to a registered object.
PATIENT = "6f3b6c0e2d1a4b7c8e9f0a1b2c3d4e5f^^^&1.3.6.1.4.1.19376.3.840.1.1.1&ISO"
REAL_SHAPED = f"""\
<lcm:SubmitObjectsRequest xmlns:lcm="urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
    xmlns:rim="urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0">
  <rim:RegistryObjectList>
    <rim:ObjectRef id="urn:uuid:0b6c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3"/>
    <rim:ExtrinsicObject id="Study-1" mimeType="application/dicom"
        objectType="urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1">
      <rim:Slot name="creationTime"><rim:ValueList><rim:Value>20240301081500</rim:Value></rim:ValueList>
        </rim:Slot>
      <rim:Slot name="languageCode"><rim:ValueList><rim:Value>en-US</rim:Value></rim:ValueList></rim:Slot>
      <rim:Slot name="sourcePatientId"><rim:ValueList><rim:Value>{PATIENT.replace("&", "&amp;")}</rim:Value>
        </rim:ValueList></rim:Slot>
      <rim:Slot name="hash"><rim:ValueList><rim:Value>2fd4e1c67a2d28fced849ee1bb76e7391b93eb12</rim:Value>
        </rim:ValueList></rim:Slot>
      <rim:Slot name="size"><rim:ValueList><rim:Value>43</rim:Value></rim:ValueList></rim:Slot>
      <rim:Slot name="repositoryUniqueId"><rim:ValueList><rim:Value>1.3.6.1.4.1.21367.2026.1.1</rim:Value>
        </rim:ValueList></rim:Slot>
      <rim:Name><rim:LocalizedString value="MR knee"/></rim:Name>
      <rim:Classification id="c-class" classificationScheme="urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a"
          classifiedObject="Study-1" nodeRepresentation="IMAGES">
        <rim:Slot name="codingScheme"><rim:ValueList><rim:Value>1.3.6.1.4.1.19376.1.2.6.1</rim:Value>
          </rim:ValueList></rim:Slot>
        <rim:Name><rim:LocalizedString value="Images"/></rim:Name>
      </rim:Classification>
      <rim:Classification id="c-event1" classificationScheme="urn:uuid:2c6b8cb7-8b2a-4051-b291-b1ae6a575ef4"
          classifiedObject="Study-1" nodeRepresentation="MR">
        <rim:Slot name="codingScheme"><rim:ValueList><rim:Value>1.2.840.10008.2.16.4</rim:Value>
          </rim:ValueList></rim:Slot>
      </rim:Classification>
      <rim:ExternalIdentifier id="e-pid" registryObject="Study-1" value="{PATIENT.replace("&", "&amp;")}"
          identificationScheme="urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427">
        <rim:Name><rim:LocalizedString value="XDSDocumentEntry.patientId"/></rim:Name>
      </rim:ExternalIdentifier>
      <rim:ExternalIdentifier id="e-uid" registryObject="Study-1" value="1.2.840.113619.2.1.1.1^7"
          identificationScheme="urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"/>
    </rim:ExtrinsicObject>
    <rim:RegistryPackage id="Set-1">
      <rim:Slot name="submissionTime"><rim:ValueList><rim:Value>20240301090000</rim:Value></rim:ValueList>
        </rim:Slot>
      <rim:ExternalIdentifier id="e-ssuid" registryObject="Set-1" value="1.2.3.4.5"
          identificationScheme="urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"/>
    </rim:RegistryPackage>
    <rim:Classification id="c-ss" classifiedObject="Set-1"
        classificationNode="urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"/>
    <rim:RegistryPackage id="Folder-1">
      <rim:Classification id="c-fol" classifiedObject="Folder-1"
          classificationNode="urn:uuid:d9d542f3-6cc4-48b6-8870-ea235fbc94c2"/>
    </rim:RegistryPackage>
    <rim:Association id="a-1" associationType="urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
        sourceObject="Set-1" targetObject="Study-1">
      <rim:Slot name="SubmissionSetStatus"><rim:ValueList><rim:Value>Original</rim:Value></rim:ValueList>
        </rim:Slot>
    </rim:Association>
    <rim:Association id="a-2" associationType="urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
        sourceObject="Folder-1" targetObject="Study-1"/>
    <rim:Association id="urn:uuid:5d1e6f70-8192-4a3b-9c4d-5e6f708192a3"
        associationType="urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
        sourceObject="Set-1" targetObject="a-2"/>
  </rim:RegistryObjectList>
</lcm:SubmitObjectsRequest>
"""


@pytest.fixture
def real() -> etree._Element:
    return etree.fromstring(REAL_SHAPED.encode())


def test_real_shaped_submission_is_schema_valid(real, lcm_schema):
    assert_valid(lcm_schema, real)


def test_parse_sorts_objects_by_kind(real):
    sub = md.parse_submission(real)
    assert [s.id for s in sub.submission_sets] == ["Set-1"]
    assert [f.id for f in sub.folders] == ["Folder-1"]
    assert [d.id for d in sub.document_entries] == ["Study-1"]
    assert [a.id for a in sub.associations] == ["a-1", "a-2", "urn:uuid:5d1e6f70-8192-4a3b-9c4d-5e6f708192a3"]
    assert sub.object_refs == ["urn:uuid:0b6c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3"]
    assert [c.id for c in sub.classifications] == ["c-ss"]
    assert sub.submission_set is sub.submission_sets[0]
    assert set(sub.by_id()) == {"Set-1", "Folder-1", "Study-1", "a-1", "a-2", sub.associations[2].id}


def test_parse_document_entry_attributes(real):
    de = md.parse_submission(real).document_entries[0]
    assert de.kind == "DocumentEntry" and de.symbolic and not de.on_demand
    assert de.mime_type == "application/dicom" and de.object_type == md.STABLE_DOCUMENT_ENTRY
    assert de.unique_id == "1.2.840.113619.2.1.1.1^7" and de.patient_id == PATIENT
    assert de.slot_value("size") == "43" and de.slot("languageCode") == ["en-US"] and de.slot("absent") == []
    assert de.name == "MR knee"
    [cls] = de.classified(md.DE_CLASS_CODE)
    assert (cls.node_representation, cls.coding_scheme, cls.name, cls.nested) == (
        "IMAGES",
        "1.3.6.1.4.1.19376.1.2.6.1",
        "Images",
        True,
    )
    assert cls.code_key == "IMAGES^^1.3.6.1.4.1.19376.1.2.6.1"
    assert de.classified(md.DE_EVENT_CODE_LIST)[0].code_key == "MR^^1.2.840.10008.2.16.4"
    [pid] = de.external_ids(md.DE_PATIENT_ID)
    assert (pid.id, pid.registry_object, pid.name) == ("e-pid", "Study-1", "XDSDocumentEntry.patientId")
    assert de.label() == "DocumentEntry Study-1 (uniqueId 1.2.840.113619.2.1.1.1^7)"
    assert de.element.get("id") == "Study-1"


def test_top_level_classification_makes_a_submission_set(real):
    ss = md.parse_submission(real).submission_sets[0]
    assert ss.unique_id == "1.2.3.4.5" and ss.patient_id is None
    marker = [c for c in ss.classifications if c.node == md.SUBMISSION_SET_NODE]
    assert len(marker) == 1 and marker[0].nested is False


def test_parse_association_ends_and_slots(real):
    a1 = md.parse_submission(real).associations[0]
    assert (a1.association_type, a1.source, a1.target) == (md.HAS_MEMBER, "Set-1", "Study-1")
    assert a1.slot("SubmissionSetStatus") == ["Original"]
    assert a1.label() == "Association a-1 (HasMember Set-1 -> Study-1)"


def test_parse_rejects_other_messages():
    with pytest.raises(XDSRegistryMetadataError):
        md.parse_submission(etree.Element(qname("rim", "RegistryObjectList")))
    with pytest.raises(XDSRegistryMetadataError, match="RegistryObjectList"):
        md.parse_submission(etree.Element(qname("lcm", "SubmitObjectsRequest")))


def test_repeated_slots_are_remembered():
    request = xs.submission()
    eo = xs.find(request, "ExtrinsicObject", "Document01")
    md.set_slot(eo, "extra", ["a"])
    eo.insert(0, eo.find(f"{{{md.RIM}}}Slot[@name='extra']").__copy__())
    de = md.parse_submission(request).document_entries[0]
    assert de.repeated_slots == ["extra"] and de.slot("extra") == ["a", "a"]


def test_uuid_urns():
    assert md.is_uuid_urn(md.new_uuid_urn())
    assert not md.is_uuid_urn("urn:uuid:not-a-uuid") and not md.is_uuid_urn("Document01")


# --- id resolution -------------------------------------------------------------------------------


def _ids_and_refs(element: etree._Element) -> set[str]:
    attrs = ("id", "lid", "classifiedObject", "sourceObject", "targetObject", "registryObject")
    return {n.get(a) for n in element.iter(f"{{{md.RIM}}}*") for a in attrs if n.get(a) is not None}


def test_resolve_replaces_every_symbolic_id(real, lcm_schema):
    sub = md.parse_submission(real)
    mapping = md.id_mapping(sub)
    assert {"Study-1", "Set-1", "Folder-1", "a-1", "a-2", "c-class", "e-pid", "c-ss"} <= set(mapping)
    assert "urn:uuid:0b6c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3" not in mapping  # ObjectRef: registered
    resolved = md.resolve_submission(sub, mapping, now="20240301090001")
    assert all(md.is_uuid_urn(v) for v in _ids_and_refs(resolved.request))
    de = resolved.document_entries[0]
    assert de.id == mapping["Study-1"] and de.unique_id == "1.2.840.113619.2.1.1.1^7"
    assert resolved.associations[1].source == mapping["Folder-1"]
    assert resolved.associations[2].target == mapping["a-2"]
    assert resolved.submission_sets[0].id == mapping["Set-1"]
    assert_valid(lcm_schema, resolved.request)
    # the caller's request is left alone
    assert md.parse_submission(real).document_entries[0].id == "Study-1"


def test_resolve_sets_status_lid_and_folder_time(real):
    sub = md.parse_submission(real)
    resolved = md.resolve_submission(sub, md.id_mapping(sub), now="20240301090001")
    for obj in resolved.objects():
        assert obj.status == md.APPROVED
        assert obj.lid == obj.id
    assert resolved.folders[0].slot("lastUpdateTime") == ["20240301090001"]
    # Slots stay first in the element, as ebRIM orders them.
    assert etree.QName(resolved.folders[0].element[0]).localname == "Slot"


def test_resolve_keeps_uuid_ids(real):
    sub = md.parse_submission(real)
    fixed = sub.associations[2].id
    resolved = md.resolve_submission(sub, md.id_mapping(sub))
    assert resolved.associations[2].id == fixed


def test_stored_text_round_trips_verbatim(real):
    de = md.parse_submission(real).document_entries[0]
    text = md.to_text(de.element)
    assert text.startswith("<rim:ExtrinsicObject") and 'xmlns:rim="' in text
    assert md.to_text(md.from_text(text)) == text


def test_set_slot_replaces_and_orders():
    element = etree.Element(qname("rim", "RegistryPackage"), id="x")
    etree.SubElement(element, qname("rim", "Name"))
    md.set_slot(element, "a", ["1"])
    md.set_slot(element, "b", ["2"])
    md.set_slot(element, "a", ["3", "4"])
    names = [c.get("name") or etree.QName(c).localname for c in element]
    assert names == ["b", "a", "Name"]
    assert [v.text for v in element[1].iter(qname("rim", "Value"))] == ["3", "4"]


# --- the sample builder --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"documents": [xs.DocSpec(), xs.DocSpec(on_demand=True), xs.DocSpec(mime_type="application/pdf")]},
        {"folders": [xs.FolderSpec(documents=[0])], "top_level_ss_classification": True},
        {"extra_associations": [xs.AssocSpec(xs.RPLC, "Document01", xs.new_uuid())]},
        {
            "documents": [
                xs.DocSpec(
                    entry_uuid=xs.new_uuid(),
                    reference_ids=["123^^^&1.2.3&ISO^urn:ihe:iti:xds:2013:accession"],
                )
            ],
            "ss_entry_uuid": xs.new_uuid(),
        },
    ],
)
def test_sample_submissions_are_schema_valid(kwargs, lcm_schema):
    assert_valid(lcm_schema, xs.submission(xs.patient_cx(), **kwargs))


def test_sample_builder_exposes_ids():
    fixed = xs.new_uuid()
    docs = [xs.DocSpec(), xs.DocSpec(entry_uuid=fixed, unique_id="1.2.3.9")]
    request = xs.submission(documents=docs)
    assert xs.document_entry_ids(request) == ["Document01", fixed]
    assert xs.submission_set_id(request) == "SubmissionSet01"
    assert xs.unique_ids(request) == [docs[0].unique_id, "1.2.3.9"]  # generated ids are recorded


def test_sample_hash_and_size_match_the_content():
    spec = xs.DocSpec(content=b"hello")
    de = md.parse_submission(xs.submission(documents=[spec])).document_entries[0]
    assert de.slot_value("hash") == hashlib.sha1(b"hello").hexdigest()  # noqa: S324
    assert de.slot_value("size") == "5"


def test_provide_and_register_carries_the_documents(lcm_schema):
    docs = [xs.DocSpec(content=b"one"), xs.DocSpec(on_demand=True), xs.DocSpec(content=b"three")]
    pnr = xs.provide_and_register(xs.patient_cx(), docs)
    assert pnr.tag == qname("xdsb", "ProvideAndRegisterDocumentSetRequest")
    assert_valid(lcm_schema, pnr[0])
    documents = pnr.findall(qname("xdsb", "Document"))
    assert [d.get("id") for d in documents] == ["Document01", "Document03"]
    assert base64.b64decode(documents[1].text) == b"three"


def test_query_builder_is_schema_valid(query_schema):
    request = xs.query(
        xs.FIND_DOCUMENTS,
        [
            ("$XDSDocumentEntryPatientId", xs.quoted("it's^^^&1.2&ISO")),
            ("$XDSDocumentEntryEventCodeList", ["('a^^b')", "('c^^d')"]),
            ("$XDSDocumentEntryEventCodeList", xs.quoted_list(["e^^f"])),
        ],
        return_type="ObjectRef",
    )
    assert_valid(query_schema, request)
    assert xs.quoted("it's") == "'it''s'"
    assert len(request.findall(f".//{{{md.RIM}}}Slot")) == 3


# --- ebRS responses ------------------------------------------------------------------------------


def test_success_response_is_valid(rs_schema):
    response = api.success_response()
    assert_valid(rs_schema, response)
    assert response.get("status") == "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"


def test_error_responses_are_valid_and_carry_every_error(rs_schema, query_schema):
    error = XdsError.many(
        [
            RegistryErrorItem("XDSRegistryMetadataError", "DocumentEntry Document01: bad", "Document01"),
            RegistryErrorItem("XDSPatientIdDoesNotMatch", "Folder F: other patient", "F"),
        ]
    )
    registry_response = api.error_response(qname("rs", "RegistryResponse"), error)
    assert_valid(rs_schema, registry_response)
    query_response = api.error_response(qname("query", "AdhocQueryResponse"), error)
    assert_valid(query_schema, query_response)
    for response in (registry_response, query_response):
        assert response.get("status") == "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"
        errors = response.findall(f"{qname('rs', 'RegistryErrorList')}/{qname('rs', 'RegistryError')}")
        assert [(e.get("errorCode"), e.get("location")) for e in errors] == [
            ("XDSRegistryMetadataError", "Document01"),
            ("XDSPatientIdDoesNotMatch", "F"),
        ]
        assert errors[0].get("codeContext") == "DocumentEntry Document01: bad"
