Feature: A clearinghouse accepts only authenticated, authorized participants
  (ITI TF-1 9 ATNA secure node; ITI TF-2a 3.19 mutual TLS; IHE roles per transaction)

  Scenario: A client without a certificate is refused
    When a client connects without a client certificate
    Then the connection is refused

  Scenario: A certificate from an unknown CA is refused
    When a client connects with a certificate from an unknown CA
    Then the connection is refused

  Scenario: A consumer may not submit and a source may not query
    Given a test patient with access code, date of birth and password
    When the PHR tries to submit a study
    Then the request is refused as not authorized
    When the edge tries to query for documents
    Then the request is refused as not authorized

  Scenario: Hostile XML is refused with a SOAP fault
    When the PHR sends a query with an external entity declaration
    Then the answer is a SOAP Sender fault
