"""The DICOM upper layer of the broker: associations that wait on their sockets, never poll.

pynetdicom's own association and DUL loops wake every millisecond per association
(an idle association costs CPU), and its reactor writes queued PDUs before it reads,
so a long answer never sees the C-CANCEL. This package replaces only those loops:
each association is one thread that blocks in ``poll`` on its socket with a deadline,
reads while it writes, and hands complete DIMSE requests to the services. PDU and
DIMSE encoding, presentation-context negotiation and datasets stay pynetdicom's and
pydicom's (docs/dicom-network-layer.md explains the choice and its measurements).
"""
