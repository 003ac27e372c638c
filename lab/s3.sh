#!/usr/bin/env bash
# The lab's S3 endpoint: a moto server on the controller, bound to the lab
# network's gateway address, over HTTPS as AWS S3 is (pgBackRest speaks nothing
# else, and nothing here sends keys in clear). Its certificate comes from a
# lab-only CA made once in lab/.state/s3-ca.crt, the file the inventories give
# as backup_s3_ca_file. Usage: lab/s3.sh start|stop|status HOST PORT
set -euo pipefail
cd "$(dirname "$0")/.."
action=${1:?start|stop|status}
host=${2:-172.29.57.1}
port=${3:-9000}
state=lab/.state
pidfile=$state/moto-$port.pid
mkdir -p "$state"

running() { [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

ca=$state/s3-ca cert=$state/s3-$host
certificate() {  # the CA (once) and this address's certificate from it (IP name, server use only)
  if [[ ! -s $ca.crt ]]; then
    (umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
      -subj "/CN=pgops lab S3 CA" -addext basicConstraints=critical,CA:TRUE \
      -addext keyUsage=critical,keyCertSign,cRLSign -keyout "$ca.key" -out "$ca.crt" 2>/dev/null)
    chmod 644 "$ca.crt"
  fi
  if [[ -s $cert.crt ]] && openssl verify -CAfile "$ca.crt" "$cert.crt" >/dev/null 2>&1 \
    && openssl x509 -in "$cert.crt" -noout -checkend $((30 * 86400)) >/dev/null; then
    return
  fi
  (umask 077 && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$host" \
    -keyout "$cert.key" 2>/dev/null \
    | openssl x509 -req -CA "$ca.crt" -CAkey "$ca.key" -set_serial "0x$(openssl rand -hex 12)" -days 825 \
      -extfile <(printf 'subjectAltName=IP:%s\nextendedKeyUsage=serverAuth\nbasicConstraints=critical,CA:FALSE\n' "$host") \
      -out "$cert.crt" 2>/dev/null)
}

case $action in
  start)
    if running; then echo "S3 endpoint running on $host:$port"; exit 0; fi
    # Its own session: nothing that ends the caller's process group (a playbook
    # run, a CI step) takes the endpoint down with it.
    certificate
    setsid nohup .venv/bin/moto_server -H "$host" -p "$port" -c "$cert.crt" -k "$cert.key" \
      >"$state/moto-$port.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    for _ in $(seq 50); do
      if curl -fsS --cacert "$ca.crt" -o /dev/null "https://$host:$port/moto-api/" 2>/dev/null; then
        echo "S3 endpoint started on https://$host:$port (CA: $ca.crt)"; exit 0
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
