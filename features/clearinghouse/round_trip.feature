Feature: A clearinghouse carries a study from an edge to the patient's PHR
  The suite plays the edge and the PHR against the clearinghouse under test
  (ITI TF-2a 3.8, ITI TF-2b 3.41, 3.42, 3.18, 3.43).

  Background:
    Given a test patient with access code, date of birth and password
    And the edge has fed the patient to the clearinghouse

  Scenario: The edge submits a study by MTOM and the PHR downloads exactly those bytes
    When the edge submits 2 DICOM images and a text report with MTOM
    Then the submission succeeds
    And the response carries the ITI-41 response action and relates to the request
    When the PHR computes the patient ID from the access code and date of birth
    And the PHR finds the documents with FindDocuments
    Then the PHR finds 3 documents
    And every document entry carries size, hash and repositoryUniqueId matching what was sent
    When the PHR retrieves every document
    Then the retrieval succeeds as MTOM
    And the PHR receives exactly the bytes the edge sent

  Scenario: The edge submits inline documents
    When the edge submits 1 DICOM image and a text report inline
    Then the submission succeeds
    When the PHR computes the patient ID from the access code and date of birth
    And the PHR finds the documents with FindDocuments
    Then the PHR finds 2 documents

  Scenario: A wrong password finds nothing
    When the edge submits 1 DICOM image and no report with MTOM
    Then the submission succeeds
    When the PHR computes the patient ID with a wrong password
    And the PHR finds the documents with FindDocuments
    Then the PHR finds 0 documents

  Scenario: Asking for a document that does not exist is a partial success
    When the edge submits 1 DICOM image and no report with MTOM
    And the PHR retrieves every document and one that does not exist
    Then the retrieval status is PartialSuccess with error XDSDocumentUniqueIdError
