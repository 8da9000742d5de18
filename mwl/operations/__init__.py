"""What the broker did and owes: audit trail, HL7 message and query logs, RIS outbox, retention."""
