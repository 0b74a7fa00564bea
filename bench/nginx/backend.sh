#!/bin/sh
# Runs the benchmark's backend nginx (bench/nginx/backend.conf) in the foreground.
#
# Inside a runnel instance it is deployed as
#   runnel run deploy SVC --command=/bin/sh --args=/path/to/bench/nginx/backend.sh
# and listens on 127.0.0.1:$PORT (runnel sets PORT). bench/run also starts it on the host.
#
#   BACKEND_LISTEN  what to listen on (default 127.0.0.1:$PORT, PORT defaulting to 8080);
#                   `unix:/path/port.sock` for a Unix socket
#   BACKEND_RUNDIR  where the rendered config, pid, logs and temp files go
#                   (default /tmp/bench-backend, in the instance's private /tmp)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
listen=${BACKEND_LISTEN:-127.0.0.1:${PORT:-8080}}
rundir=${BACKEND_RUNDIR:-/tmp/bench-backend}
mkdir -p "$rundir"
sed -e "s|@LISTEN@|$listen|g" -e "s|@RUNDIR@|$rundir|g" "$here/backend.conf" >"$rundir/nginx.conf"
# A root master switches its worker to `nobody` unless told otherwise. Inside a runnel
# sandbox the process is root of a user namespace that maps only its own uid, so that
# switch fails (chown/setuid to 65534 is EINVAL); the worker then keeps the master's user.
set --
if [ "$(id -u)" = 0 ] && ! awk '$1 <= 65534 && 65534 < $1 + $3 { found = 1 } END { exit !found }' /proc/self/uid_map; then
    set -- -g "user $(id -un) $(id -gn);"
fi
exec /usr/sbin/nginx -p "$rundir/" -c "$rundir/nginx.conf" -e "$rundir/error.log" "$@"
