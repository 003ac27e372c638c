#!/usr/bin/env bash
# The lab's S3 endpoint on the controller: HTTPS on the lab network's gateway
# address, as AWS S3 is (pgBackRest 2.45 speaks nothing else, and nothing here
# sends keys in clear). stunnel serves TLS there, with a certificate from a
# lab-only CA made once in lab/.state/s3-ca.crt (the file the inventories give
# as backup_s3_ca_file), in front of a moto server on loopback (PORT + 10000).
# moto's own TLS ends connections without a TLS close_notify, which pgBackRest
# 2.45 reads as an error; stunnel closes them properly.
# Usage: lab/s3.sh start|stop|status HOST PORT
set -euo pipefail
cd "$(dirname "$0")/.."
action=${1:?start|stop|status}
host=${2:-172.29.57.1}
port=${3:-9000}
state=lab/.state
backend=$((port + 10000))
mkdir -p "$state"
state=$(cd "$state" && pwd)  # stunnel wants absolute paths
pidfile=$state/moto-$port.pid tls_pidfile=$state/stunnel-$port.pid

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
running() { alive "$pidfile" && alive "$tls_pidfile"; }
stop() { local f; for f in "$tls_pidfile" "$pidfile"; do if alive "$f"; then kill "$(cat "$f")"; fi; rm -f "$f"; done; }

ca=$state/s3-ca cert=$state/s3-$host
# The address is named twice: as an IP entry (Python's ssl matches those) and
# as a DNS entry (pgBackRest 2.45 matches DNS entries only, by string).
certificate() {  # the CA (once) and this address's certificate from it (server use only)
  if [[ ! -s $ca.crt ]]; then
    (umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
      -subj "/CN=pgops lab S3 CA" -addext basicConstraints=critical,CA:TRUE \
      -addext keyUsage=critical,keyCertSign,cRLSign -keyout "$ca.key" -out "$ca.crt" 2>/dev/null)
    chmod 644 "$ca.crt"
  fi
  if [[ -s $cert.crt ]] && openssl verify -CAfile "$ca.crt" "$cert.crt" >/dev/null 2>&1 \
    && openssl x509 -in "$cert.crt" -noout -checkend $((30 * 86400)) >/dev/null \
    && openssl x509 -in "$cert.crt" -noout -ext subjectAltName | grep -q "DNS:$host"; then
    return
  fi
  (umask 077 && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$host" \
    -keyout "$cert.key" 2>/dev/null \
    | openssl x509 -req -CA "$ca.crt" -CAkey "$ca.key" -set_serial "0x$(openssl rand -hex 12)" -days 825 \
      -extfile <(printf 'subjectAltName=IP:%s,DNS:%s\nextendedKeyUsage=serverAuth\nbasicConstraints=critical,CA:FALSE\n' "$host" "$host") \
      -out "$cert.crt" 2>/dev/null)
}

case $action in
  start)
    if running; then echo "S3 endpoint running on $host:$port"; exit 0; fi
    # Its own session: nothing that ends the caller's process group (a playbook
    # run, a CI step) takes the endpoint down with it.
    stop  # what is left of a half-running one
    certificate
    setsid nohup .venv/bin/moto_server -H 127.0.0.1 -p "$backend" >"$state/moto-$port.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    cat >"$state/stunnel-$port.conf" <<EOF
foreground = yes
[s3]
accept = $host:$port
connect = 127.0.0.1:$backend
cert = $cert.crt
key = $cert.key
sslVersionMin = TLSv1.2
EOF
    setsid nohup stunnel "$state/stunnel-$port.conf" >"$state/stunnel-$port.log" 2>&1 </dev/null &
    echo $! >"$tls_pidfile"
    for _ in $(seq 50); do
      if curl -fsS --cacert "$ca.crt" -o /dev/null "https://$host:$port/moto-api/" 2>/dev/null; then
        echo "S3 endpoint started on https://$host:$port (CA: $ca.crt)"; exit 0
      fi
      sleep 0.2
    done
    echo "S3 endpoint did not start; see $state/moto-$port.log and $state/stunnel-$port.log" >&2; exit 1 ;;
  stop)
    stop; echo "S3 endpoint stopped" ;;
  status)
    if running; then echo "running"; else echo "stopped"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status [host] [port]" >&2; exit 2 ;;
esac
