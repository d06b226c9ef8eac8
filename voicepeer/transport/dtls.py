"""DTLS that any standard WebRTC stack can complete, and the reason when one cannot.

aiortc's certificate is ECDSA P-256, and its SSL context offers only ECDHE-ECDSA cipher suites. When
our answer says ``a=setup:active`` (what JSEP asks of an answer to ``actpass``), we are the DTLS client
and the suite is chosen for the *peer's* certificate: a peer whose certificate is RSA (GStreamer's
``webrtcbin`` by default, OBS, many WHIP encoders) finds no suite in common and the handshake ends in
OpenSSL's "no shared cipher". Here the context also offers the ECDHE-RSA suites of the same strength.
Nothing else changes: our certificate stays ECDSA (so as the DTLS server we still pick ECDSA suites),
and the peer's certificate is still checked against the offer's ``a=fingerprint`` by aiortc after
the handshake; the suites only say how keys are exchanged and signed.

aiortc logs a failed handshake at debug level only, without saying which transport, so the context
also keeps the alerts sent and received and the suite agreed: ``failure_reason`` turns them, and the
ICE state, into one line for the log and the client's ``error`` event.
"""

from __future__ import annotations

import logging
from typing import Any

from aiortc import RTCPeerConnection
from aiortc.rtcdtlstransport import RTCCertificate, SRTPProtectionProfile, generate_certificate
from cryptography.hazmat.backends import default_backend
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL

log = logging.getLogger(__name__)

CIPHERS = b":".join(
    (
        # aiortc's own, for an ECDSA peer certificate (every browser's)
        b"ECDHE-ECDSA-AES128-GCM-SHA256",
        b"ECDHE-ECDSA-CHACHA20-POLY1305",
        b"ECDHE-ECDSA-AES128-SHA",
        b"ECDHE-ECDSA-AES256-SHA",
        # the same for an RSA peer certificate
        b"ECDHE-RSA-AES128-GCM-SHA256",
        b"ECDHE-RSA-CHACHA20-POLY1305",
        b"ECDHE-RSA-AES128-SHA",
        b"ECDHE-RSA-AES256-SHA",
    )
)

_CB_READ, _CB_WRITE, _CB_ALERT, _CB_HANDSHAKE_DONE = 0x04, 0x08, 0x4000, 0x20

ALERTS = {
    0: "close_notify",
    10: "unexpected_message",
    20: "bad_record_mac",
    22: "record_overflow",
    40: "handshake_failure",
    42: "bad_certificate",
    43: "unsupported_certificate",
    44: "certificate_revoked",
    45: "certificate_expired",
    46: "certificate_unknown",
    47: "illegal_parameter",
    48: "unknown_ca",
    50: "decode_error",
    51: "decrypt_error",
    70: "protocol_version",
    71: "insufficient_security",
    80: "internal_error",
    86: "inappropriate_fallback",
    90: "user_canceled",
    109: "missing_extension",
    110: "unsupported_extension",
}
"""TLS alert descriptions (RFC 8446 section 6), by number."""


class Certificate(RTCCertificate):
    """aiortc's certificate (ECDSA P-256, made per peer connection) with a context that completes a
    handshake with RSA peers too, and remembers how the last handshake went."""

    def __init__(self, key: Any, cert: Any) -> None:
        super().__init__(key=key, cert=cert)
        self.alert: str | None = None
        """The last fatal alert: "sent handshake_failure", "received bad_certificate"..."""
        self.cipher: str | None = None
        """The suite of the completed handshake."""

    @classmethod
    def generate(cls, key: Any = None) -> Certificate:
        """A self-signed certificate for ``key`` (by default a new ECDSA P-256 key, as aiortc's)."""
        key = key if key is not None else ec.generate_private_key(ec.SECP256R1(), default_backend())
        return cls(key=key, cert=generate_certificate(key))

    def _create_ssl_context(self, srtp_profiles: list[SRTPProtectionProfile]) -> SSL.Context:
        ctx = super()._create_ssl_context(srtp_profiles)
        ctx.set_cipher_list(CIPHERS)
        ctx.set_info_callback(self._info)
        return ctx

    def _info(self, connection: SSL.Connection, where: int, value: int) -> None:
        # Called by OpenSSL inside the handshake: it must not raise.
        if where & _CB_ALERT and value >> 8 == 2:  # a fatal alert
            name = ALERTS.get(value & 0xFF, f"alert {value & 0xFF}")
            self.alert = f"{'sent' if where & _CB_WRITE else 'received'} {name}"
        elif where & _CB_HANDSHAKE_DONE:
            try:
                self.cipher = connection.get_cipher_name()
            except Exception:  # a name for the log only
                self.cipher = None


def use_certificate(pc: RTCPeerConnection, certificate: RTCCertificate | None = None) -> RTCCertificate:
    """Gives ``pc`` ``certificate`` (by default a new ``Certificate``); before its offer or answer, as
    its transports are made with it. aiortc 1.16 has no public way to pass a certificate in (the W3C
    API's ``certificates``)."""
    certificate = certificate if certificate is not None else Certificate.generate()
    pc._RTCPeerConnection__certificates = [certificate]  # type: ignore[attr-defined]
    return certificate


def failure_reason(pc: RTCPeerConnection, certificate: Certificate) -> str:
    """Why ``pc`` failed, in a line: ICE found no working pair, or the DTLS handshake failed and how."""
    if pc.iceConnectionState == "failed":
        return "ICE failed: no candidate pair answered connectivity checks"
    if certificate.alert is not None:
        hint = ""
        if certificate.alert == "sent handshake_failure":
            hint = " (no cipher suite or certificate type in common with the client)"
        return f"DTLS handshake failed: {certificate.alert}{hint}"
    transports = {t.receiver.transport for t in pc.getTransceivers()}
    if pc.sctp is not None:
        transports.add(pc.sctp.transport)
    if any(t.state == "failed" for t in transports):
        return "DTLS failed: the handshake did not complete, or the certificate did not match a=fingerprint"
    return "the connection failed"
