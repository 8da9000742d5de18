"""mwl: a Modality Worklist broker (HL7 v2 orders in, DICOM Modality Worklist out)."""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
