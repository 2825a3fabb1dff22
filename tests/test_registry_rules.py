"""ITI-42 validation rules (registry.rules): one group of tests per rule function."""

from __future__ import annotations

import pytest
from lxml import etree

from clearinghouse.config import DEFAULT_AFFINITY_DOMAIN_OID
from registry import formats, rules
from registry import metadata as md
from registry.metadata import parse_submission
from registry.rules import KnownObject
from tests import xds_samples as xs

OID = DEFAULT_AFFINITY_DOMAIN_OID


def parsed(*args: object, **kwargs: object) -> md.Submission:
    return parse_submission(xs.submission(*args, **kwargs))  # type: ignore[arg-type]


def codes(items: list) -> list[str]:
    return [i.code for i in items]


def one_doc(spec: xs.DocSpec) -> md.DocumentEntry:
    return parsed(documents=[spec]).document_entries[0]


# --- value formats -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["2024", "202401", "20240105", "2024010510", "202401051030", "20240105103059"])
def test_dtm_accepts_every_precision(value):
    assert rules.is_dtm(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "24",
        "20241",
        "2024-01-05",
        "20241305",
        "20240132",
        "2024010524",
        "202401051060",
        "20240105103000Z",
        "202401051030001",
    ],
)
def test_dtm_rejects_malformed_and_out_of_range(value):
    assert not rules.is_dtm(value)


def test_oid_syntax_and_length():
    assert rules.is_oid("1.2.840.10008.1")
    assert rules.is_oid("2.25." + "9" * 38)
    for bad in ["", "1", "3.1", "1.02", "1..2", "1.2.", "a.b", "1.2." + "3" * 64]:
        assert not rules.is_oid(bad), bad


def test_document_unique_id_allows_oid_or_oid_with_extension():
    assert rules.is_document_unique_id("1.2.3")
    assert rules.is_document_unique_id("1.2.3^abc123")
    assert not rules.is_document_unique_id("1.2.3^")
    assert not rules.is_document_unique_id("1.2.3^" + "x" * 17)
    assert not rules.is_document_unique_id("1.2.3^a^b")
    assert not rules.is_document_unique_id("1." + "2" * 64 + "^ext")
    assert not rules.is_document_unique_id("urn:oid:1.2.3")


def test_patient_cx_only_id_and_assigning_authority():
    assert rules.is_patient_cx("abc^^^&1.2.3&ISO")
    for bad in [
        "abc",
        "abc^^^1.2.3",
        "abc^^^&1.2.3&L",
        "abc^x^^&1.2.3&ISO",
        "^^^&1.2.3&ISO",
        "abc^^^&1.2.3&ISO^x",
    ]:
        assert not rules.is_patient_cx(bad), bad


def test_hash_size_language_mime():
    assert rules.is_sha1("da39a3ee5e6b4b0d3255bfef95601890afd80709")
    assert rules.is_sha1("DA39A3EE5E6B4B0D3255BFEF95601890AFD80709")
    assert not rules.is_sha1("da39a3ee")
    assert not rules.is_sha1("g" * 40)
    assert rules.is_size("0") and rules.is_size("123456")
    assert not rules.is_size("-1") and not rules.is_size("1.5") and not rules.is_size("")
    assert rules.is_language("en-US") and rules.is_language("de")
    assert not rules.is_language("en_US") and not rules.is_language("")
    assert rules.is_mime_type("application/dicom") and rules.is_mime_type("text/plain; charset=utf-8")
    assert not rules.is_mime_type("dicom") and not rules.is_mime_type("")


# --- building blocks -----------------------------------------------------------------------------


def test_check_external_ids_missing_duplicate_and_malformed():
    de = one_doc(xs.DocSpec(omit=frozenset({"uniqueId"})))
    [err] = rules.check_external_ids(de, rules.DOCUMENT_ENTRY_IDS)
    assert err.code == "XDSRegistryMetadataError"
    assert "DocumentEntry Document01" in err.context and md.DE_UNIQUE_ID in err.context
    assert "XDSDocumentEntry.uniqueId" in err.context and "missing" in err.context
    assert err.location == "Document01"

    request = xs.submission(documents=[xs.DocSpec(unique_id="1.2.3")])
    eo = xs.find(request, "ExtrinsicObject", "Document01")
    eo.append(eo.findall(f"{{{md.RIM}}}ExternalIdentifier")[-1].__copy__())
    [dup] = rules.check_external_ids(parse_submission(request).document_entries[0], rules.DOCUMENT_ENTRY_IDS)
    assert "occurs 2 times" in dup.context

    bad = one_doc(xs.DocSpec(unique_id="not-an-oid"))
    [err] = rules.check_external_ids(bad, rules.DOCUMENT_ENTRY_IDS)
    assert "'not-an-oid'" in err.context and "OID" in err.context


def test_check_code_needs_code_and_one_coding_scheme():
    de = one_doc(xs.DocSpec())
    code = de.classified(md.DE_CLASS_CODE)[0]
    assert rules.check_code(de, "classCode", code) == []
    code.node_representation = ""
    code.slots["codingScheme"] = []
    errs = rules.check_code(de, "classCode", code)
    assert len(errs) == 2
    assert "nodeRepresentation" in errs[0].context and "codingScheme" in errs[1].context


def test_check_codes_cardinality():
    de = one_doc(xs.DocSpec(omit=frozenset({"classCode"}), event_codes=[xs.EVENT_CT, xs.EVENT_MR]))
    errs = rules.check_codes(de, rules.DOCUMENT_ENTRY_CODES)
    assert [e.context.split(": ", 1)[1] for e in errs] == [
        f"required classification XDSDocumentEntry.classCode ({md.DE_CLASS_CODE}) is missing"
    ]
    two_formats = rules.CodeRule("XDSDocumentEntry.eventCodeList", md.DE_EVENT_CODE_LIST, 0, 1)
    [err] = rules.check_codes(de, [two_formats])
    assert "occurs 2 times" in err.context


def test_check_slots_presence_cardinality_format():
    de = one_doc(xs.DocSpec(omit=frozenset({"languageCode"}), slots={"creationTime": ["2024-01-05"]}))
    errs = rules.check_slots(de, rules.STABLE_DOCUMENT_ENTRY_SLOTS)
    text = " | ".join(e.context for e in errs)
    assert "required slot languageCode is missing" in text
    assert "creationTime value '2024-01-05' is not a valid DTM" in text

    de = one_doc(xs.DocSpec(slots={"hash": ["a" * 40, "b" * 40]}))
    [err] = rules.check_slots(de, rules.STABLE_DOCUMENT_ENTRY_SLOTS)
    assert "slot hash must have exactly one value, has 2" in err.context

    de = one_doc(xs.DocSpec())
    de.repeated_slots.append("size")
    [err] = rules.check_slots(de, rules.STABLE_DOCUMENT_ENTRY_SLOTS)
    assert "slot size occurs more than once" in err.context


def test_check_forbidden_slots():
    de = one_doc(xs.DocSpec())
    [err] = rules.check_forbidden_slots(de, ["hash", "absent"], "because")
    assert "slot hash must not be present (because)" in err.context


# --- per-object rules ----------------------------------------------------------------------------


def test_valid_document_entry_passes():
    assert rules.check_document_entry(one_doc(xs.DocSpec())) == []


@pytest.mark.parametrize(
    "omitted, expected",
    [
        ("uniqueId", "XDSDocumentEntry.uniqueId"),
        ("patientId", "XDSDocumentEntry.patientId"),
        ("classCode", "XDSDocumentEntry.classCode"),
        ("typeCode", "XDSDocumentEntry.typeCode"),
        ("formatCode", "XDSDocumentEntry.formatCode"),
        ("healthcareFacilityTypeCode", "XDSDocumentEntry.healthcareFacilityTypeCode"),
        ("practiceSettingCode", "XDSDocumentEntry.practiceSettingCode"),
        ("confidentialityCode", "XDSDocumentEntry.confidentialityCode"),
        ("creationTime", "slot creationTime"),
        ("languageCode", "slot languageCode"),
        ("sourcePatientId", "slot sourcePatientId"),
        ("hash", "slot hash"),
        ("size", "slot size"),
        ("repositoryUniqueId", "slot repositoryUniqueId"),
        ("mimeType", "mimeType"),
    ],
)
def test_document_entry_required_attribute_missing(omitted, expected):
    de = one_doc(xs.DocSpec(unique_id="1.2.3.4", omit=frozenset({omitted})))
    errs = rules.check_document_entry(de)
    assert len(errs) == 1, errs
    assert errs[0].code == "XDSRegistryMetadataError"
    assert expected in errs[0].context and "missing" in errs[0].context
    prefix = "DocumentEntry Document01" + ("" if omitted == "uniqueId" else " (uniqueId 1.2.3.4)")
    assert errs[0].context.startswith(prefix + ": ")


def test_document_entry_optional_attributes_may_be_absent():
    spec = xs.DocSpec(
        service_start_time=None,
        service_stop_time=None,
        event_codes=(),
        title=None,
        omit=frozenset({"author"}),
    )
    assert rules.check_document_entry(one_doc(spec)) == []


def test_document_entry_malformed_values():
    spec = xs.DocSpec(
        slots={
            "size": ["big"],
            "hash": ["123"],
            "serviceStartTime": ["yesterday"],
            "repositoryUniqueId": ["repo"],
            "sourcePatientId": ["12345"],
        },
    )
    text = " | ".join(e.context for e in rules.check_document_entry(one_doc(spec)))
    for name in ("size", "hash", "serviceStartTime", "repositoryUniqueId", "sourcePatientId"):
        assert f"slot {name} value" in text


def test_document_entry_object_type_and_mime_type():
    de = one_doc(xs.DocSpec(mime_type="dicom"))
    de.object_type = "urn:uuid:00000000-0000-0000-0000-000000000000"
    text = " | ".join(e.context for e in rules.check_document_entry(de))
    assert "objectType" in text and "mimeType 'dicom'" in text


def test_on_demand_entry_has_no_hash_or_size():
    assert rules.check_document_entry(one_doc(xs.DocSpec(on_demand=True))) == []
    de = one_doc(xs.DocSpec(on_demand=True, slots={"hash": ["a" * 40]}))
    [err] = rules.check_document_entry(de)
    assert "slot hash must not be present" in err.context


def test_check_authors_needs_person_or_institution():
    de = one_doc(xs.DocSpec(author_person=None, author_institution=None))
    [err] = rules.check_authors(de, md.DE_AUTHOR, "XDSDocumentEntry.author")
    assert "neither authorPerson nor authorInstitution" in err.context
    assert rules.check_authors(one_doc(xs.DocSpec(author_person=None)), md.DE_AUTHOR, "a") == []


def test_valid_submission_set_passes():
    assert rules.check_submission_set(parsed().submission_sets[0]) == []


@pytest.mark.parametrize(
    "omitted, expected",
    [
        ("uniqueId", "XDSSubmissionSet.uniqueId"),
        ("sourceId", "XDSSubmissionSet.sourceId"),
        ("patientId", "XDSSubmissionSet.patientId"),
        ("contentTypeCode", "XDSSubmissionSet.contentTypeCode"),
        ("submissionTime", "slot submissionTime"),
    ],
)
def test_submission_set_required_attribute_missing(omitted, expected):
    ss = parsed(ss_omit=frozenset({omitted})).submission_sets[0]
    [err] = rules.check_submission_set(ss)
    assert err.context.startswith("SubmissionSet SubmissionSet01")
    assert expected in err.context and "missing" in err.context


def test_submission_set_malformed_values():
    ss = parsed(source_id="source", submission_time="today", ss_unique_id="1.2.3^x").submission_sets[0]
    text = " | ".join(e.context for e in rules.check_submission_set(ss))
    assert "sourceId value 'source'" in text and "submissionTime value 'today'" in text
    assert "uniqueId value '1.2.3^x'" in text  # extensions are for documents only


def test_valid_folder_passes():
    assert rules.check_folder(parsed(folders=[xs.FolderSpec()]).folders[0]) == []


@pytest.mark.parametrize(
    "omitted, expected",
    [
        ("uniqueId", "XDSFolder.uniqueId"),
        ("patientId", "XDSFolder.patientId"),
        ("codeList", "XDSFolder.codeList"),
    ],
)
def test_folder_required_attribute_missing(omitted, expected):
    folder = parsed(folders=[xs.FolderSpec(omit=frozenset({omitted}))]).folders[0]
    [err] = rules.check_folder(folder)
    assert err.context.startswith("Folder Folder01") and expected in err.context


# --- submission-wide rules -----------------------------------------------------------------------


def test_check_structure_exactly_one_submission_set():
    sub = parsed()
    assert rules.check_structure(sub) == []
    sub.submission_sets.append(sub.submission_sets[0])
    [err] = rules.check_structure(sub)
    assert "exactly one is allowed" in err.context
    sub.submission_sets = []
    [err] = rules.check_structure(sub)
    assert "no SubmissionSet" in err.context


def test_check_structure_unclassified_package_and_foreign_objects():
    request = xs.submission()
    object_list = request[0]
    md_el = object_list.makeelement(f"{{{md.RIM}}}RegistryPackage", {"id": "Lost"})
    object_list.append(md_el)
    object_list.append(object_list.makeelement(f"{{{md.RIM}}}ExternalLink", {"id": "x", "externalURI": "http://x"}))
    errs = rules.check_structure(parse_submission(request))
    assert len(errs) == 2
    assert "RegistryPackage Lost" in errs[0].context and "ExternalLink" in errs[1].context


def test_check_ids_unique_in_message():
    sub = parsed(documents=[xs.DocSpec(entry_uuid="Same"), xs.DocSpec(entry_uuid="Same")])
    [err] = rules.check_ids(sub)
    assert "id Same is used by 2 objects" in err.context


def test_check_association_type_and_submission_set_status():
    sub = parsed(
        submission_set_status="Copied",
        extra_associations=[xs.AssocSpec("urn:example:Likes", "Document01", "SubmissionSet01")],
    )
    errs = [e for a in sub.associations for e in rules.check_association(a, sub)]
    text = " | ".join(e.context for e in errs)
    assert "SubmissionSetStatus = Original" in text
    assert "'urn:example:Likes' is not an XDS association type" in text


def test_check_association_reference_to_registered_document():
    old = xs.new_uuid()
    ok = parsed(
        extra_associations=[xs.AssocSpec(xs.HAS_MEMBER, "SubmissionSet01", old, {"SubmissionSetStatus": ["Reference"]})]
    )
    assert all(rules.check_association(a, ok) == [] for a in ok.associations)
    bad = parsed(
        extra_associations=[xs.AssocSpec(xs.HAS_MEMBER, "SubmissionSet01", old, {"SubmissionSetStatus": ["Original"]})]
    )
    errs = [e for a in bad.associations for e in rules.check_association(a, bad)]
    assert len(errs) == 1 and "Reference" in errs[0].context


def test_check_membership_every_entry_and_folder_link():
    sub = parsed(documents=[xs.DocSpec(), xs.DocSpec(link=False)])
    [err] = rules.check_membership(sub)
    assert err.context.startswith("DocumentEntry Document02") and "not a member" in err.context

    sub = parsed(folders=[xs.FolderSpec(documents=[0])])
    assert rules.check_membership(sub) == []
    member_of_inner = [a for a in sub.associations if a.target.startswith("as")]
    sub.associations.remove(member_of_inner[0])
    [err] = rules.check_membership(sub)
    assert "adds a document to a folder" in err.context


def test_check_local_references_symbolic_must_exist():
    sub = parsed(extra_associations=[xs.AssocSpec(xs.RPLC, "Document01", "Nowhere")])
    [err] = rules.check_local_references(sub)
    assert err.code == "UnresolvedReferenceException" and "Nowhere" in err.context


def test_external_references_are_the_uuids_not_defined_here():
    old = xs.new_uuid()
    sub = parsed(extra_associations=[xs.AssocSpec(xs.RPLC, "Document01", old)])
    assert rules.external_references(sub) == {old}
    assert rules.check_local_references(sub) == []


def test_duplicate_unique_id_in_message():
    sub = parsed(documents=[xs.DocSpec(unique_id="1.2.3"), xs.DocSpec(unique_id="1.2.3")], ss_unique_id="1.2.3")
    errs = rules.check_unique_ids_in_message(sub)
    assert codes(errs) == ["XDSRegistryDuplicateUniqueIdInMessage"] * 2
    assert "also used by SubmissionSet SubmissionSet01" in errs[0].context


def test_patient_ids_must_match():
    other = xs.patient_cx()
    sub = parsed(documents=[xs.DocSpec(), xs.DocSpec(patient_id=other)], folders=[xs.FolderSpec(patient_id=other)])
    errs = rules.check_patient_ids_match(sub)
    assert codes(errs) == ["XDSPatientIdDoesNotMatch"] * 2
    assert errs[0].context.startswith("DocumentEntry Document02") and errs[1].context.startswith("Folder Folder01")


def test_privacy_only_rsna_ids_of_the_affinity_domain():
    sub = parsed(xs.patient_cx(oid="1.2.840.99"))
    errs = rules.check_privacy(sub, OID)
    assert codes(errs) == ["XDSUnknownPatientId"] * 2
    assert "affinity domain" in errs[0].context
    assert rules.check_privacy(parsed(), OID) == []


def test_privacy_no_demographics_in_source_patient_info():
    spec = xs.DocSpec(slots={"sourcePatientInfo": ["PID-3|x^^^&1.2&ISO", "PID-5|Doe^John", "PID-7|19700101"]})
    errs = rules.check_privacy(parsed(documents=[spec]), OID)
    assert [e.context.split(": ")[1].split(" is")[0] for e in errs] == [
        "sourcePatientInfo PID-5",
        "sourcePatientInfo PID-7",
    ]


def test_validate_submission_collects_every_error():
    sub = parsed(
        documents=[
            xs.DocSpec(unique_id="1.2.3", omit=frozenset({"classCode"})),
            xs.DocSpec(unique_id="1.2.3", patient_id=xs.patient_cx(), link=False),
        ],
    )
    found = set(codes(rules.validate_submission(sub, OID)))
    assert found == {
        "XDSRegistryMetadataError",
        "XDSRegistryDuplicateUniqueIdInMessage",
        "XDSPatientIdDoesNotMatch",
    }


def test_valid_submission_has_no_errors():
    sub = parsed(
        documents=[xs.DocSpec(), xs.DocSpec(on_demand=True)],
        folders=[xs.FolderSpec(documents=[0, 1])],
        top_level_ss_classification=True,
    )
    assert rules.validate_submission(sub, OID) == []


# --- rules against registry state ----------------------------------------------------------------


def known(uuid: str, kind: str = "DocumentEntry", patient: str | None = None, **kw: object) -> KnownObject:
    return KnownObject(uuid, kind, patient, kw.pop("status", md.APPROVED), **kw)  # type: ignore[arg-type]


def test_new_ids_must_not_exist():
    taken = xs.new_uuid()
    sub = parsed(documents=[xs.DocSpec(entry_uuid=taken)])
    [err] = rules.check_new_ids_unused(sub, {taken: known(taken)})
    assert "already registered" in err.context


def test_references_must_exist_and_share_the_patient():
    pid = xs.patient_cx()
    present, absent, foreign = xs.new_uuid(), xs.new_uuid(), xs.new_uuid()
    sub = parsed(
        pid,
        extra_associations=[
            xs.AssocSpec(xs.RPLC, "Document01", present),
            xs.AssocSpec(xs.RPLC, "Document01", absent),
            xs.AssocSpec(xs.RPLC, "Document01", foreign),
        ],
    )
    existing = {present: known(present, patient=pid), foreign: known(foreign, patient=xs.patient_cx())}
    errs = rules.check_references_exist(sub, existing)
    assert codes(errs) == ["UnresolvedReferenceException", "XDSPatientIdDoesNotMatch"]
    assert absent in errs[0].context and foreign in errs[1].context


def test_object_refs_must_exist():
    sub = parsed()
    ref = xs.new_uuid()
    sub.object_refs.append(ref)
    [err] = rules.check_references_exist(sub, {})
    assert err.code == "UnresolvedReferenceException"


def test_replacement_target_must_be_an_approved_document_entry():
    pid = xs.patient_cx()
    dep, ss = xs.new_uuid(), xs.new_uuid()
    sub = parsed(
        pid,
        extra_associations=[
            xs.AssocSpec(xs.RPLC, "Document01", dep),
            xs.AssocSpec(xs.RPLC, "Document01", ss),
        ],
    )
    existing = {dep: known(dep, patient=pid, status=md.DEPRECATED), ss: known(ss, "SubmissionSet", pid)}
    errs = rules.check_relationships(sub, existing)
    assert codes(errs) == ["XDSRegistryDeprecatedDocumentError", "XDSRegistryMetadataError"]
    assert "is not Approved (Deprecated)" in errs[0].context and "is a SubmissionSet" in errs[1].context
    ok = parsed(pid, extra_associations=[xs.AssocSpec(xs.RPLC, "Document01", dep)])
    assert rules.check_relationships(ok, {dep: known(dep, patient=pid)}) == []


def test_folder_membership_links_folders_to_documents():
    pid = xs.patient_cx()
    folder, doc = xs.new_uuid(), xs.new_uuid()
    sub = parsed(
        pid,
        extra_associations=[
            xs.AssocSpec(xs.HAS_MEMBER, folder, "Document01", id="inner"),
            xs.AssocSpec(xs.HAS_MEMBER, "SubmissionSet01", "inner"),
            xs.AssocSpec(xs.HAS_MEMBER, doc, "Document01", id="wrong"),
            xs.AssocSpec(xs.HAS_MEMBER, "SubmissionSet01", "wrong"),
        ],
    )
    existing = {folder: known(folder, "Folder", pid), doc: known(doc, "DocumentEntry", pid)}
    [err] = rules.check_folder_membership(sub, existing)
    assert "only the SubmissionSet and Folders have members" in err.context


def test_unique_id_in_registry_identical_resubmission_is_accepted():
    spec = xs.DocSpec(unique_id="1.2.3.4")
    sub = parsed(documents=[spec])
    de = sub.document_entries[0]
    same = known("urn:uuid:x", unique_id="1.2.3.4", hash=de.slot_value("hash").upper(), size=int(de.slot_value("size")))
    assert rules.check_unique_ids_in_registry(sub, {"1.2.3.4": [same]}) == []


def test_unique_id_in_registry_with_other_hash_or_size():
    sub = parsed(documents=[xs.DocSpec(unique_id="1.2.3.4")])
    de = sub.document_entries[0]
    other_hash = known("urn:uuid:x", unique_id="1.2.3.4", hash="0" * 40, size=int(de.slot_value("size")))
    [err] = rules.check_unique_ids_in_registry(sub, {"1.2.3.4": [other_hash]})
    assert err.code == "XDSNonIdenticalHash" and "1.2.3.4" in err.context
    other_size = known("urn:uuid:x", unique_id="1.2.3.4", hash=de.slot_value("hash"), size=1)
    [err] = rules.check_unique_ids_in_registry(sub, {"1.2.3.4": [other_size]})
    assert err.code == "XDSNonIdenticalSize"


def test_unique_id_in_registry_held_by_another_kind_or_reused_by_package():
    sub = parsed(documents=[xs.DocSpec(unique_id="1.2.3.4")], ss_unique_id="1.2.3.5")
    holder = known("urn:uuid:x", "SubmissionSet", unique_id="1.2.3.4")
    [err] = rules.check_unique_ids_in_registry(sub, {"1.2.3.4": [holder]})
    assert err.code == "XDSDuplicateUniqueIdInRegistry" and "(SubmissionSet)" in err.context
    [err] = rules.check_unique_ids_in_registry(sub, {"1.2.3.5": [known("urn:uuid:y", "SubmissionSet")]})
    assert err.code == "XDSDuplicateUniqueIdInRegistry" and err.context.startswith("SubmissionSet")
    od = parsed(documents=[xs.DocSpec(unique_id="1.2.3.6", on_demand=True)])
    [err] = rules.check_unique_ids_in_registry(od, {"1.2.3.6": [known("urn:uuid:z", unique_id="1.2.3.6")]})
    assert err.code == "XDSDuplicateUniqueIdInRegistry"


def test_patients_must_be_known_and_are_asked_once():
    pid = xs.patient_cx()
    asked: list[str] = []

    def is_known(p: str) -> bool:
        asked.append(p)
        return False

    errs = rules.check_patients_known(parsed(pid, documents=[xs.DocSpec(), xs.DocSpec()]), is_known)
    assert codes(errs) == ["XDSUnknownPatientId"] * 3
    assert asked == [pid]
    assert rules.check_patients_known(parsed(pid), lambda p: True) == []


def test_validate_against_registry_combines_the_registry_rules():
    sub = parsed(extra_associations=[xs.AssocSpec(xs.RPLC, "Document01", xs.new_uuid())])
    found = codes(rules.validate_against_registry(sub, {}, {}, lambda p: False))
    assert "UnresolvedReferenceException" in found and "XDSUnknownPatientId" in found


# --- value formats of the HL7 types (registry.formats) --------------------------------------------


def test_xcn_needs_an_id_or_a_family_name_and_an_iso_authority():
    assert formats.is_xcn("^Welby^Marcus^^^Dr^MD")
    assert formats.is_xcn("11375^Welby^Marcus^J^Jr.^Dr^MD^^&1.2.840.113619.6.197&ISO")
    assert formats.is_xcn("11375^^^^^^^^&1.2.3&ISO")
    for bad in ["", "^^Marcus", "1^Welby^^^^^^^1.2.3", "1^W^^^^^^^&1.2.3&L", "^W" + "^x" * 23, "^" + "W" * 300]:
        assert not formats.is_xcn(bad), bad


def test_xon_needs_a_name_and_an_oid_identifier():
    assert formats.is_xon("Some Hospital")
    assert formats.is_xon("Some Hospital^^^^^^^^^1.2.3.4.5")
    assert formats.is_xon("Some Hospital^^^^^&1.2.3&ISO^^^^45")
    for bad in ["", "^^^^^^^^^1.2.3", "Some Hospital^^^^^^^^^abc", "Some Hospital^^^^^&1.2.3&ISO^^^^", "a^" * 11]:
        assert not formats.is_xon(bad), bad


def test_xtn_email_or_phone():
    assert formats.is_xtn("^^Internet^radiology@example.org")
    assert formats.is_xtn("^PRN^PH^^^555^1234567")
    assert formats.is_xtn("(555)1234567")
    for bad in ["", "^^Internet^not-an-address", "^^Internet^", "^PRN^PH"]:
        assert not formats.is_xtn(bad), bad


def test_intended_recipient_and_source_patient_info():
    assert formats.is_intended_recipient("Some Hospital^^^^^^^^^1.2.3|^Welby^Marcus")
    assert formats.is_intended_recipient("|^Welby^Marcus|^^Internet^m@example.org")
    assert not formats.is_intended_recipient("||")
    assert not formats.is_intended_recipient("^^^^^^^^^1.2.3|^Welby")
    assert formats.is_source_patient_info("PID-3|123^^^&1.2.3&ISO")
    for bad in ["PID-3", "PID-x|1", "pid-3|1", "PID-3|"]:
        assert not formats.is_source_patient_info(bad), bad


def test_uuid_urn_is_canonical():
    assert formats.is_uuid_urn("urn:uuid:0b6c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3")
    for bad in ["urn:uuid:0b6c1d2e3f404a5b8c6d7e8f90a1b2c3", "urn:uuid:{0b6c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3}", "0b6c"]:
        assert not formats.is_uuid_urn(bad), bad
    assert formats.is_home_community_id("urn:oid:1.2.3") and not formats.is_home_community_id("1.2.3")


# --- attribute rules added for complete ITI-42 validation -----------------------------------------


def test_check_slot_names_unknown_attributes_but_urn_extensions():
    de = one_doc(xs.DocSpec(slots={"urn:example:extra": ["x"], "Color": ["red"], "urn:ihe:iti:xds:madeUp": ["y"]}))
    errs = rules.check_slot_names(de, rules.DOCUMENT_ENTRY_SLOT_NAMES)
    assert [e.context.split("slot ")[1].split(" is")[0] for e in errs] == ["'Color'", "'urn:ihe:iti:xds:madeUp'"]
    assert rules.check_slot_names(one_doc(xs.DocSpec()), rules.DOCUMENT_ENTRY_SLOT_NAMES) == []


def test_check_slot_value_lengths():
    [err] = rules.check_slot_value_lengths(one_doc(xs.DocSpec(slots={"URI": ["http://x/" + "a" * 300]})))
    assert "at most 256" in err.context


def test_check_nested_parts_describe_their_owner():
    request = xs.submission(documents=[xs.DocSpec()])
    xs.find(request, "ExtrinsicObject", "Document01").find(f"{{{md.RIM}}}Classification").set(
        "classifiedObject", "SomethingElse"
    )
    de = parse_submission(request).document_entries[0]
    [err] = rules.check_nested_parts(de)
    assert "classifiedObject SomethingElse" in err.context


def test_check_object_id_symbolic_or_uuid_and_lid():
    sub = parsed(documents=[xs.DocSpec(entry_uuid="urn:uuid:not-a-uuid")])
    [err] = rules.check_object_id(sub.document_entries[0])
    assert "is not a UUID" in err.context
    request = xs.submission()
    xs.find(request, "ExtrinsicObject", "Document01").set("lid", xs.new_uuid())
    de = parse_submission(request).document_entries[0]
    [err] = rules.check_object_id(de)
    assert "needs ITI-57" in err.context
    assert rules.check_object_id(de, new_version=True) == []


def test_check_not_limited():
    request = xs.submission()
    eo = xs.find(request, "ExtrinsicObject", "Document01")
    eo.append(etree.Element(f"{{{md.RIM}}}Classification", id="lm", classifiedObject="Document01"))
    eo[-1].set("classificationNode", "")
    eo[-1].set("classificationScheme", md.DE_LIMITED_METADATA)
    [err] = rules.check_not_limited(parse_submission(request).document_entries[0], md.DE_LIMITED_METADATA)
    assert "limitedMetadata" in err.context


def test_check_imaging_manifest_format_and_mime_type():
    assert rules.check_imaging_manifest(one_doc(xs.DocSpec())) == []  # the sample default is a KOS manifest
    wrong_scheme = xs.Code(xs.FORMAT_KOS.code, "1.2.3")
    errs = rules.check_imaging_manifest(one_doc(xs.DocSpec(format_code=wrong_scheme, mime_type="text/plain")))
    assert len(errs) == 2 and "codingScheme 1.2.840.10008.2.6.1" in errs[0].context
    assert rules.check_imaging_manifest(one_doc(xs.DocSpec(format_code=xs.FORMAT_PDF, mime_type="a/b"))) == []


def test_check_authors_value_formats():
    bad = one_doc(xs.DocSpec(author_person="^^Marcus", author_institution="^^^^^^^^^1.2.3"))
    errs = rules.check_authors(bad, md.DE_AUTHOR, "XDSDocumentEntry.author")
    assert [e.context.split(": ", 2)[2].split(" is")[0] for e in errs] == [
        "authorPerson '^^Marcus'",
        "authorInstitution '^^^^^^^^^1.2.3'",
    ]
    assert rules.check_authors(one_doc(xs.DocSpec()), md.DE_AUTHOR, "XDSDocumentEntry.author") == []


def test_check_folder_title_and_slots():
    sub = parsed(folders=[xs.FolderSpec(title="")])
    errs = rules.check_folder(sub.folders[0])
    assert any("title" in e.context for e in errs)


def test_check_relationship_static_rules():
    old = xs.new_uuid()
    sub = parsed(
        documents=[xs.DocSpec(), xs.DocSpec()],
        extra_associations=[
            xs.AssocSpec(xs.RPLC, "Document01", old),
            xs.AssocSpec(xs.APND, "Document01", "Document02"),
            xs.AssocSpec(xs.XFRM, "SubmissionSet01", old),
            xs.AssocSpec(xs.SIGNS, "Document02", "Document01"),
        ],
    )
    errs = {a.id: rules.check_relationship(a, sub) for a in sub.associations}
    by_type = {a.association_type: errs[a.id] for a in sub.associations}
    assert by_type[xs.RPLC] == [] and by_type[xs.SIGNS] == []
    assert "must be a DocumentEntry already registered" in by_type[xs.APND][0].context
    assert "sourceObject of XFRM must be a DocumentEntry of this submission" in by_type[xs.XFRM][0].context


def test_check_relationships_snapshot_and_double_replacement():
    pid = xs.patient_cx()
    stable, od = xs.new_uuid(), xs.new_uuid()
    sub = parsed(
        pid,
        documents=[xs.DocSpec(), xs.DocSpec()],
        extra_associations=[
            xs.AssocSpec("urn:ihe:iti:2010:AssociationType:IsSnapshotOf", "Document01", stable),
            xs.AssocSpec(xs.RPLC, "Document01", od),
            xs.AssocSpec(xs.XFRM_RPLC, "Document02", od),
        ],
    )
    existing = {
        stable: known(stable, patient=pid, entry_type=md.STABLE_DOCUMENT_ENTRY),
        od: known(od, patient=pid, entry_type=md.ON_DEMAND_DOCUMENT_ENTRY),
    }
    text = " | ".join(e.context for e in rules.check_relationships(sub, existing))
    assert "IsSnapshotOf targets an On-Demand DocumentEntry" in text and "is already replaced by" in text


def test_folder_may_only_gain_approved_documents():
    pid = xs.patient_cx()
    folder, doc = xs.new_uuid(), xs.new_uuid()
    sub = parsed(
        pid,
        extra_associations=[
            xs.AssocSpec(xs.HAS_MEMBER, folder, doc, id="inner"),
            xs.AssocSpec(xs.HAS_MEMBER, "SubmissionSet01", "inner"),
        ],
    )
    existing = {folder: known(folder, "Folder", pid), doc: known(doc, patient=pid, status=md.DEPRECATED)}
    [err] = rules.check_relationships(sub, existing)
    assert err.code == "XDSRegistryDeprecatedDocumentError"
