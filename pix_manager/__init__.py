"""IHE Patient Identifier Cross-reference Manager: ITI-8/9/10 (HL7 v2 over MLLP/TLS), ITI-44/45 (HL7 v3
over SOAP 1.2) and ITI-83 (PIXm, FHIR R4), with merges forwarded to the registry as ITI-8."""
