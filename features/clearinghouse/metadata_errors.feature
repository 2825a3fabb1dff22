Feature: A clearinghouse refuses bad submissions with the IHE error codes and keeps nothing
  (ITI TF-2b 3.41.4.1.3, 3.42.4.1.3; ITI TF-3 4.2.4 error codes)

  Background:
    Given a test patient with access code, date of birth and password
    And the edge has fed the patient to the clearinghouse

  Scenario Outline: Bad metadata is refused with the right error code
    When the edge submits a study with <defect>
    Then the submission fails with error <code>
    And the patient has no documents at the clearinghouse

    Examples:
      | defect                                  | code                       |
      | a hash that is not the document's SHA-1 | XDSRepositoryMetadataError |
      | a size that is not the document's size  | XDSRepositoryMetadataError |
      | no classCode on a document entry        | XDSRegistryMetadataError   |
      | no uniqueId on a document entry         | XDSRepositoryMetadataError |
      | the same uniqueId on two documents      | XDSRepositoryDuplicateUniqueIdInMessage |
      | a document entry without its document   | XDSMissingDocument         |

  Scenario: A patient that was never fed is refused
    When the edge submits a study for a patient that was never fed
    Then the submission fails with error XDSUnknownPatientId

  Scenario: Stored query parameter errors
    When the PHR sends FindDocuments without a patient ID
    Then the query fails with error XDSStoredQueryMissingParam
    When the PHR sends an unknown stored query
    Then the query fails with error XDSUnknownStoredQuery
