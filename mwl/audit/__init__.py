"""ATNA audit (IHE ITI-20): DICOM audit messages (PS3.15 A.5) sent by syslog.

A core part, not an adapter: the syslog client uses only the standard library
(socket, ssl) and :mod:`mwl.tls`, so the HL7 and DICOM adapters and the web page
can all record events here without importing each other. Messages are queued in
the database in the transaction of the change they record (:mod:`.queue`) and
delivered by one thread per database (:mod:`.sender`).
"""
