# The stack's edge: nginx (the HTTPS front door) and coturn (TURN), one small image for both.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx-light coturn openssl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10000 secrets \
 && useradd --system --uid 10002 --gid secrets --no-create-home --shell /usr/sbin/nologin edge \
 && mkdir -p /certs /secrets /tmp/nginx && chown edge /certs /tmp/nginx \
 && chown root:secrets /secrets && chmod 2770 /secrets
COPY docker/frontdoor/nginx.conf /etc/nginx/voicepeer.conf
COPY docker/frontdoor/frontdoor.sh docker/frontdoor/turn.sh /usr/local/bin/
# Explicit: an imported base image (docker/base-image.sh on an older checkout) may carry no PATH.
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
USER 10002
