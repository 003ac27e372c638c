#!/usr/bin/env bash
# The lab's S3 endpoint: a moto server on the controller, bound to the lab
# network's gateway address. Usage: lab/s3.sh start|stop|status HOST PORT
set -euo pipefail
cd "$(dirname "$0")/.."
action=${1:?start|stop|status}
host=${2:-172.29.57.1}
port=${3:-9000}
state=lab/.state
pidfile=$state/moto-$port.pid
mkdir -p "$state"

running() { [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

case $action in
  start)
    if running; then echo "S3 endpoint running on $host:$port"; exit 0; fi
    # Its own session: nothing that ends the caller's process group (a playbook
    # run, a CI step) takes the endpoint down with it.
    setsid nohup .venv/bin/moto_server -H "$host" -p "$port" >"$state/moto-$port.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    for _ in $(seq 50); do
      if curl -fsS -o /dev/null "http://$host:$port/moto-api/" 2>/dev/null; then
        echo "S3 endpoint started on $host:$port"; exit 0
      fi
      sleep 0.2
    done
    echo "S3 endpoint did not start; see $state/moto-$port.log" >&2; exit 1 ;;
  stop)
    if running; then kill "$(cat "$pidfile")"; fi
    rm -f "$pidfile"; echo "S3 endpoint stopped" ;;
  status)
    if running; then echo "running"; else echo "stopped"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status [host] [port]" >&2; exit 2 ;;
esac
