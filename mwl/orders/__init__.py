"""Orders and patients coming in (HL7 or the page), and what people do to worklist items."""
