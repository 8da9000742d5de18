"""DICOM adapter: Modality Worklist C-FIND SCP (Identifier -> WorklistQuery -> responses)."""
