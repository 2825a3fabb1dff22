Feature: An edge sends a study to the clearinghouse as RSNA Image Share requires
  The edge under test is given test patients by a conformance session
  (clearinghouse conformance session new --role edge); it feeds one (ITI-8), submits a study for
  them (ITI-41) and audits the export (ITI-20). The clearinghouse records what it sent and each
  scenario judges one part of it (ITI TF-2a 3.8, 3.20; ITI TF-2b 3.41; ITI TF-3 4.2).

  Background:
    Given an open edge conformance session
    And the edge has fed a test patient and submitted a study

  Scenario: The patient identity feed is a valid ITI-8 message
    Then every feed message follows the ITI-8 rules

  Scenario: The edge computed the RSNA-ID from the test data
    Then every patient ID the edge sent is the RSNA-ID of a test patient

  Scenario: The submission's metadata is complete and valid
    Then every submission follows the ITI-41 metadata rules

  Scenario: Declared hashes and sizes are those of the documents
    Then every declared hash and size is that of the document sent

  Scenario: The submission is framed as MTOM/XOP
    Then every submission is an MTOM/XOP package framed as the profile requires

  Scenario: The edge audits the export
    Then the edge audited every submission with an ITI-41 export event
