"""DICOM JSON (PS3.18 F.2) -> the Native DICOM Model in XML (PS3.19 A.1), and multipart bodies.

The DICOMweb answers are made as DICOM JSON; an ``application/dicom+xml`` client
gets the same Data Sets written in XML, each element from its JSON form (tag, VR,
values, person-name groups, sequence items). Only written, never parsed: payloads
in XML are not accepted, so no untrusted XML is ever read.
"""

from __future__ import annotations

import secrets
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import Any

from pydicom.datadict import keyword_for_tag

NAMESPACE = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
DICOM_XML = "application/dicom+xml"
MULTIPART_XML = f'multipart/related; type="{DICOM_XML}"'
# PS3.19 Table A.1.5-2: the components of a person-name group, in PN order.
_PN_COMPONENTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def _person_name(parent: ET.Element, number: int, value: object) -> None:
    name = ET.SubElement(parent, "PersonName", number=str(number))
    if not isinstance(value, dict):
        return
    for group in _PN_GROUPS:
        text = value.get(group)
        if not text:
            continue
        element = ET.SubElement(name, group)
        for component, part in zip(_PN_COMPONENTS, str(text).split("^"), strict=False):
            if part:
                ET.SubElement(element, component).text = part


def _attributes(parent: ET.Element, dataset: dict[str, Any]) -> None:
    for tag in sorted(dataset):
        element = dataset[tag]
        vr = str(element.get("vr", "UN"))
        attribute = ET.SubElement(parent, "DicomAttribute", {"tag": tag, "vr": vr})
        keyword = keyword_for_tag(int(tag, 16))
        if keyword:
            attribute.set("keyword", keyword)
        for number, value in enumerate(element.get("Value", ()), start=1):
            if vr == "SQ":
                item = ET.SubElement(attribute, "Item", number=str(number))
                _attributes(item, value if isinstance(value, dict) else {})
            elif vr == "PN":
                _person_name(attribute, number, value)
            else:
                written = ET.SubElement(attribute, "Value", number=str(number))
                if value is not None:
                    written.text = str(value)


def native_dicom_model(dataset: dict[str, Any]) -> bytes:
    """One Data Set (DICOM JSON) as a Native DICOM Model document, UTF-8."""
    root = ET.Element("NativeDicomModel", xmlns=NAMESPACE)
    _attributes(root, dataset)
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return body


def multipart(parts: Iterable[bytes], part_type: str) -> tuple[bytes, str]:
    """A ``multipart/related`` body (RFC 2387) of ``parts``, and its Content-Type."""
    boundary = secrets.token_hex(16)
    chunks = []
    for part in parts:
        chunks.append(f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode())
        chunks.append(part + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    content_type = f'multipart/related; type="{part_type}"; boundary={boundary}'
    return b"".join(chunks), content_type
