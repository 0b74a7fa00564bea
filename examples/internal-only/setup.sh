#!/usr/bin/env bash
# The guide's secure setup as runnel commands, in the guide's order: an internal-only receiver
# without public access, a VPC network and a connector, a service account granted Cloud Run
# Invoker on the receiver, and the guide's Python caller running as that account with all its
# egress through the connector. Run it against a running daemon (`runnel up`), from anywhere.
#
#   examples/internal-only/setup.sh
#   RUNNEL=target/release/runnel REGION=local1 examples/internal-only/setup.sh
#
# Instances run as their own unprivileged user: the caller's files and its Python packages must
# be readable by everyone and not under /tmp (each instance has a private /tmp). PYDEPS is where
# google-auth and requests are installed (see python/README.md); APP_DIR is where guide.py and
# server.py are (default: python/ next to this script).
set -euo pipefail

RUNNEL=${RUNNEL:-runnel}
REGION=${REGION:-local1}
PYDEPS=${PYDEPS:-/var/lib/runnel-test-python}
here=$(cd "$(dirname "$0")" && pwd)
APP_DIR=${APP_DIR:-$here/python}
run() {
  echo "+ runnel $*" >&2
  "$RUNNEL" "$@"
}

# 1. Restrict ingress: the receiver admits only requests that come through a VPC network of
#    the project, and only from principals holding run.routes.invoke.
run run deploy receiver --region="$REGION" --command=python3 --args=-m,http.server,8080 \
  --working-dir="$APP_DIR" --ingress=internal --no-allow-unauthenticated
receiver_url=$("$RUNNEL" run services describe receiver --region="$REGION" --format=json |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["uri"])')

# 2. A VPC network and a Serverless VPC Access connector in the caller's region.
run compute networks create vpc
run compute networks vpc-access connectors create conn --region="$REGION" --network=vpc --range=10.8.0.0/28

# 3. A service account for the caller, granted Cloud Run Invoker on the receiver.
run iam service-accounts create caller --display-name="Calling service"
email=$("$RUNNEL" iam service-accounts describe caller --format=json | python3 -c 'import json, sys; print(json.load(sys.stdin)["email"])')
run run services add-iam-policy-binding receiver --region="$REGION" \
  --member="serviceAccount:$email" --role=roles/run.invoker

# 4. The caller runs as that account, with all its egress through the connector
#    (private-ranges-only would send the call to the receiver's URL out directly: 404).
run run deploy caller --region="$REGION" --command=python3 --args=server.py --working-dir="$APP_DIR" \
  --set-env-vars="RECEIVING_SERVICE_URL=$receiver_url,PYTHONPATH=$PYDEPS,PYTHONUNBUFFERED=1" \
  --vpc-connector=conn --vpc-egress=all-traffic --service-account=caller --allow-unauthenticated

caller_url=$("$RUNNEL" run services describe caller --region="$REGION" --format=json |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["uri"])')
echo "Each request to the caller runs the guide's make_internal_request():"
echo "  curl $caller_url/"
echo "The receiver is unreachable from here (404): curl $receiver_url/"
echo "Why a call is refused: runnel troubleshoot call --from=caller --to=receiver --region=$REGION"
