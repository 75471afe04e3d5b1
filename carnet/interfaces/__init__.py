"""HL7 v2 interfaces over MLLP: admissions (ADT) and results (ORU^R01) in, through the gate."""
