#!/bin/sh
# coturn in shared-secret mode. The secret comes from VOICEPEER_TURN_SECRET, or is made at first start
# into /secrets/turn_secret, which the peers read (VOICEPEER_TURN_SECRET_FILE): never a default one.
set -eu
secret=${VOICEPEER_TURN_SECRET:-}
if [ -z "$secret" ]; then
  # Readable by the group the peers share with coturn (gid 10000), by nobody else.
  [ -s /secrets/turn_secret ] || (umask 027 && head -c 32 /dev/urandom | base64 | tr -d '\n=' >/secrets/turn_secret)
  secret=$(cat /secrets/turn_secret)
fi
exec turnserver -n --listening-port="${TURN_PORT:-3478}" \
  --use-auth-secret --static-auth-secret="$secret" --realm=voicepeer \
  --min-port="${TURN_MIN_PORT:-49160}" --max-port="${TURN_MAX_PORT:-49200}" \
  --no-cli --no-tls --no-dtls --fingerprint --no-multicast-peers \
  --log-file=stdout --simple-log
