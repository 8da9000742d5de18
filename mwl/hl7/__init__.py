"""HL7 v2 adapter: MLLP listener and client, message parsing, acknowledgements."""
