#!/bin/sh
# The front door: a self-signed certificate at first start unless one is mounted at /certs, then nginx.
set -eu
if [ ! -s /certs/tls.crt ] || [ ! -s /certs/tls.key ]; then
  host=${PUBLIC_HOST:-127.0.0.1}
  case "$host" in *[!0-9.]*) san="DNS:$host" ;; *) san="IP:$host" ;; esac
  echo "frontdoor: making a self-signed certificate for $host (mount your own at /certs/tls.crt, tls.key)"
  openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=$host" \
    -addext "subjectAltName=$san,DNS:localhost,IP:127.0.0.1" \
    -keyout /certs/tls.key -out /certs/tls.crt 2>/dev/null
fi
exec nginx -c /etc/nginx/voicepeer.conf -g 'daemon off;'
