"""XDS-I.b transactions are audited with their own EventTypeCode: a RAD-68 submission (an ITI-41 message
carrying a KOS manifest) is an Import at the repository with EventTypeCode RAD-68, a plain ITI-41
submission stays ITI-41, and RAD-69 retrievals are audited as RAD-69. Checked through ITI-81 on the
running server, after real transactions over mutual TLS."""

from __future__ import annotations

import edge
import imaging_samples as im
import xds_samples as xs
from atna_client import agents_by_role, entity_ids, events_for, subtype_codes

from clearinghouse.xmlsafe import NS

SUBMISSION_SET_UID_SCHEME = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"


def _patient(clearinghouse) -> str:  # noqa: ANN001
    patient = edge.patient_for(edge.new_access_code(), "19720304")
    client = clearinghouse.feed_client()
    try:
        assert b"MSA|AA|" in client.send(edge.feed_message(patient))
    finally:
        client.close()
    return patient


def test_rad68_submission_is_an_import_with_the_rad68_event_type(clearinghouse):
    patient = _patient(clearinghouse)
    study = im.imaging_study({"CT_small.dcm": 1})
    request = xs.provide_and_register(patient, im.rad68_documents(study, im.manifest(study, edge.REPOSITORY_ID)))
    ss_uid = request.find(f".//rim:ExternalIdentifier[@identificationScheme='{SUBMISSION_SET_UID_SCHEME}']", NS).get(
        "value"
    )
    reply = clearinghouse.soap("edge", "/xds/repository").call(
        edge.ITI41, request, attachments=edge.to_mtom(request), mtom=True
    )
    assert reply.body.get("status") == edge.SUCCESS, edge.errors_of(reply.body)

    (rad68,) = events_for(clearinghouse, [("entity-id", ss_uid), ("subtype", "RAD-68")])
    assert rad68["type"]["code"] == "110107"  # Import, at the repository
    assert rad68["subtype"] == [
        {
            "system": "urn:ihe:event-type-code",
            "code": "RAD-68",
            "display": "Provide and Register Imaging Document Set - MTOM/XOP",
        }
    ]
    assert rad68["action"] == "C" and rad68["outcome"] == "0"
    roles = agents_by_role(rad68)
    assert roles["110153"]["who"]["identifier"]["value"] == "edge"
    assert roles["110153"]["name"].startswith("CN=edge,")
    assert roles["110152"]["who"]["identifier"]["value"].endswith("/xds/repository")
    assert entity_ids(rad68, "1") == [patient] and entity_ids(rad68, "20") == [ss_uid]
    # The same submission is not also audited as a plain ITI-41: its three events are the repository's
    # RAD-68 import and the ITI-42 export and import.
    about = events_for(clearinghouse, [("entity-id", ss_uid)], n=3)
    assert sorted(c for e in about for c in subtype_codes(e)) == ["ITI-42", "ITI-42", "RAD-68"]

    # RAD-69: the images the manifest references, retrieved by the PHR.
    [inst] = study.instances
    wanted = [(inst.study_uid, inst.series_uid, inst.sop_instance_uid)]
    got = clearinghouse.soap("phr", "/xds/repository").call(
        im.RAD69, im.rad69_request(wanted, edge.REPOSITORY_ID), mtom=True
    )
    assert edge.retrieved_documents(got) == {inst.sop_instance_uid: inst.data}
    (rad69,) = events_for(clearinghouse, [("entity-id", inst.study_uid), ("subtype", "RAD-69")])
    assert rad69["outcome"] == "0"
    assert agents_by_role(rad69)["110152"]["name"].startswith("CN=phr,")


def test_plain_submission_stays_iti41(clearinghouse):
    patient = _patient(clearinghouse)
    reply = edge.submit(clearinghouse.soap("edge", "/xds/repository"), edge.study(patient, samples=["CT_small.dcm"]))
    assert reply.body.get("status") == edge.SUCCESS
    (ev,) = events_for(clearinghouse, [("patient.identifier", patient), ("subtype", "ITI-41")])
    assert ev["type"]["code"] == "110107" and ev["subtype"][0]["code"] == "ITI-41"
