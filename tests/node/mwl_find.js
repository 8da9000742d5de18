// One Modality Worklist C-FIND (or C-ECHO) with dcmjs-dimse, for tests/dicom/test_dcmjs.py.
// Usage: node mwl_find.js HOST PORT CALLED CALLING QUERY_JSON [KEY CERT CA]
// Prints one JSON line per response: {"status": ..., "dataset": {...}}, then "done".
'use strict';
const fs = require('fs');
const dcmjsDimse = require('dcmjs-dimse');
const { Client } = dcmjsDimse;
const { CFindRequest, CEchoRequest } = dcmjsDimse.requests;

const [host, port, called, calling, queryJson, key, cert, ca] = process.argv.slice(2);
const client = new Client();
const query = JSON.parse(queryJson);
const request = query === 'echo' ? new CEchoRequest() : CFindRequest.createWorklistFindRequest(query);
request.on('response', (response) => {
  const out = { status: response.getStatus() };
  if (response.hasDataset && response.hasDataset()) {
    out.dataset = response.getDataset().getElements();
  }
  console.log(JSON.stringify(out));
});
client.addRequest(request);
client.on('networkError', (e) => {
  console.log(JSON.stringify({ error: String(e) }));
  process.exitCode = 2;
});
client.on('closed', () => console.log('done'));
const options = { connectTimeout: 10000, associationTimeout: 20000, pduTimeout: 20000 };
if (key) {
  options.securityOptions = {
    key: fs.readFileSync(key), cert: fs.readFileSync(cert), ca: fs.readFileSync(ca),
    minVersion: 'TLSv1.2', rejectUnauthorized: true,
  };
}
client.send(host, Number(port), calling, called, options);
