Feature: A PHR finds and downloads the patient's study as RSNA Image Share requires
  A conformance session (clearinghouse conformance session new --role phr) preloads a study for a
  test patient and gives the PHR under test the access code, date of birth and password. The PHR
  computes the RSNA-ID, queries the registry (ITI-18), retrieves the documents (ITI-43) and audits
  the import (ITI-20); each scenario judges one part of what it sent (ITI TF-2a 3.18, 3.20;
  ITI TF-2b 3.43).

  Background:
    Given an open PHR conformance session with a preloaded study
    And the PHR has queried the registry

  Scenario: The PHR computed the RSNA-ID from what the patient typed
    Then the PHR queried with the test patient's RSNA-ID
    And the registry returned the preloaded study to the PHR

  Scenario: The PHR uses a stored query the profile allows
    Then every query is a stored query the profile allows

  Scenario: The PHR retrieves every document it found
    Then the PHR retrieved every document it found

  Scenario: The PHR audits the import
    Then the PHR audited every retrieval with an ITI-43 import event
