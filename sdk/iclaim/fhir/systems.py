"""Identifier and code systems used in iClaim FHIR documents."""

from __future__ import annotations

CLAIM_REF = "urn:iclaim:claim-ref"
INSURER = "urn:iclaim:insurer"
REASON = "urn:iclaim:reason"
DECISION_STATE_EXT = "urn:iclaim:fhir:extension:decision-state"
# Thai national (citizen) id and MOPH hospital code, as in the SIL-TH Thai core profiles.
THAI_CID = "https://terms.sil-th.org/id/th-cid"
MOPH_HCODE = "https://terms.sil-th.org/id/th-moph-hcode"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
CLAIM_TYPE = "http://terminology.hl7.org/CodeSystem/claim-type"
PROCESS_PRIORITY = "http://terminology.hl7.org/CodeSystem/processpriority"
ADJUDICATION = "http://terminology.hl7.org/CodeSystem/adjudication"
PAYMENT_TYPE = "http://terminology.hl7.org/CodeSystem/ex-paymenttype"
DIAGNOSIS_TYPE = "http://terminology.hl7.org/CodeSystem/ex-diagnosistype"
