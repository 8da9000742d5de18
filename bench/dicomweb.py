"""MWL-RS Search side by side with the DIMSE C-FIND it mirrors, in one process (not a test).

Loads the peers' generated worklist (``cfind_inprocess.load``: the same items as
wlmscpfs and Orthanc serve), starts the worklist SCP and the web page (cheroot, as
``mwl serve`` runs it) on ephemeral loopback ports, and sends the peers' typical
query both ways, **interleaved** (one C-FIND, one REST search, and so on), so the
machine's noise falls on both alike:

* ``c-find``: a pynetdicom SCU (association + C-FIND + release), Identifier as the
  REST parameters mean it (``search_identifier``), so both return the same keys;
* ``rest``: ``GET /dicomweb/modality-scheduled-procedure-steps`` over a new HTTP
  connection (urllib), JSON decoded.

Prints the medians and their ratio. The numbers are noisy on a shared machine;
compare them within one run only.

Usage::

    python bench/dicomweb.py --n 1000 --queries 30
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import cfind_inprocess
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

from mwl.admin.tokens import create_token
from mwl.config import Settings
from mwl.dicom.dicomweb import DicomWebService, search_identifier
from mwl.dicom.scp import WorklistScp
from mwl.store.engine import make_engine, make_session_factory
from mwl.store.models import User
from web import create_app
from web.server import WebServer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--queries", type=int, default=30)
    p.add_argument("--modality", default="CT")
    p.add_argument("--station", default="CT01")
    p.add_argument("--date", default="20261121")
    a = p.parse_args(argv)
    # An empty --modality or --station leaves that key out (a broader query).
    params = [
        (name, value)
        for name, value in (
            ("00400100.00080060", a.modality),
            ("00400100.00400001", a.station),
            ("00400100.00400002", a.date),
        )
        if value
    ]
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        cfind_inprocess.load(url, a.n, Path(tmp))
        engine = make_engine(url)
        readers = make_session_factory(engine)
        writers = make_session_factory(engine, writer=True)
        with writers.begin() as session:
            session.add(User(username="bench", password_hash="-", role="viewer"))
            session.flush()
            token = create_token(session, "bench", "bench")
        settings = Settings(
            database_url=url, bind_address="127.0.0.1", dicom_port=0, dicom_ae_title="MWLBENCH"
        )
        scp = WorklistScp(settings, readers)
        scp.start()
        app = create_app(
            settings,
            readers,
            writer_factory=writers,
            dicomweb_service=DicomWebService(settings, readers, writers),
        )
        web = WebServer(app, "127.0.0.1", 0)
        web.start()
        try:
            host, port = scp.address
            ae = AE(ae_title="BENCHSCU")
            ae.add_requested_context(ModalityWorklistInformationFind)
            identifier = search_identifier(params)
            whost, wport = web.address
            rest_url = (
                f"http://{whost}:{wport}/dicomweb/modality-scheduled-procedure-steps?"
                + urllib.parse.urlencode(params)
            )
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/dicom+json"}
            dimse, rest, counts = [], [], set()
            for i in range(a.queries + 2):
                started = time.perf_counter()
                assoc = ae.associate(host, port, ae_title="MWLBENCH")
                found = sum(
                    1
                    for status, _ in assoc.send_c_find(identifier, ModalityWorklistInformationFind)
                    if status and status.Status in (0xFF00, 0xFF01)
                )
                assoc.release()
                middle = time.perf_counter()
                request = urllib.request.Request(rest_url, headers=headers)
                with urllib.request.urlopen(request, timeout=60) as response:
                    body = response.read()
                items = json.loads(body) if body else []
                done = time.perf_counter()
                counts.add((found, len(items)))
                if i >= 2:  # two warm-up rounds
                    dimse.append((middle - started) * 1000)
                    rest.append((done - middle) * 1000)
        finally:
            web.shutdown()
            scp.shutdown()
            engine.dispose()
    c_find, search = statistics.median(dimse), statistics.median(rest)
    print("command: python bench/dicomweb.py " + " ".join(sys.argv[1:]))
    print(f"matches per query (C-FIND, REST): {sorted(counts)}")
    print(f"c-find median {c_find:.1f} ms, rest median {search:.1f} ms")
    print(f"rest/c-find {search / c_find:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
