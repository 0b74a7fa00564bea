// The guide's calling service, in Node, with Google's own auth library.
//
// Each GET to this service calls RECEIVING_SERVICE_URL the way Google documents it:
// `auth.getIdTokenClient(url)` then `client.request({url})`. google-auth-library finds the
// metadata server as on Cloud Run (runnel sets GCE_METADATA_HOST/GCE_METADATA_IP and K_SERVICE),
// fetches an ID token for the URL, and gaxios sends the call through the egress proxy announced in
// HTTPS_PROXY/HTTP_PROXY, skipping it for the hosts in NO_PROXY (the metadata server). Nothing here
// knows about runnel.
//
// The answer is what the call got, as JSON: {status, body, request_id}, where request_id is the
// receiving frontend's X-Runnel-Request-Id, so a refusal can be looked up with
// `runnel logs --denied`. If no token could be had, the answer is 502 with the library's error.
'use strict';

const http = require('node:http');
const {GoogleAuth} = require('google-auth-library');

const url = process.env.RECEIVING_SERVICE_URL;
if (!url) {
  console.error('RECEIVING_SERVICE_URL is not set: deploy with --set-env-vars=RECEIVING_SERVICE_URL=<the receiver\'s URL>');
  process.exit(1);
}
const auth = new GoogleAuth();

// The guide's makeRequest: an ID token client for the receiver's URL, then the call. A refusal by
// the receiver is an answer too; gaxios throws it as an error that carries the response.
async function makeRequest() {
  const client = await auth.getIdTokenClient(url);
  try {
    const res = await client.request({url, responseType: 'text'});
    return seen(res);
  } catch (e) {
    if (e.response) return seen(e.response);
    throw e;
  }
}

function seen(res) {
  const requestId = res.headers && typeof res.headers.get === 'function'
    ? res.headers.get('x-runnel-request-id')
    : null;
  return {status: res.status, body: String(res.data ?? ''), request_id: requestId};
}

// Answers with a Content-Length (not chunked), as the Python and Rust examples do.
function send(res, status, type, body) {
  res.writeHead(status, {'Content-Type': type, 'Content-Length': Buffer.byteLength(body)}).end(body);
}

http.createServer((req, res) => {
  if (req.method !== 'GET') {
    send(res, 405, 'text/plain; charset=utf-8', 'only GET is served here\n');
    return;
  }
  makeRequest().then(
    answer => send(res, 200, 'application/json', JSON.stringify(answer)),
    err => {
      console.error(`Error making internal request: ${err.message}`);
      send(res, 502, 'text/plain; charset=utf-8', `the internal request failed: ${err.message}\n`);
    },
  );
}).listen(Number(process.env.PORT || 8080), '0.0.0.0');
