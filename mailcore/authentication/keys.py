"""DKIM keys: making them (RSA 2048 and Ed25519, RFC 8463) and the TXT record that publishes each."""

from __future__ import annotations

import base64
from dataclasses import dataclass

import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

RSA = "rsa"
ED25519 = "ed25519"
RSA_BITS = 2048  # RFC 8301 §3.2: at least 1024, and 2048 is what receivers expect today


@dataclass(frozen=True)
class KeyPair:
    algorithm: str  # rsa or ed25519: the k= of the key record
    private: str  # what dkimpy signs with: PKCS#1 PEM for RSA, the base64 seed for Ed25519
    public: str  # the p= of the key record, base64


def generate(algorithm: str) -> KeyPair:
    if algorithm == RSA:
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        ).decode("ascii")
        # RFC 6376 §3.6.1: p= is the base64 of the DER SubjectPublicKeyInfo.
        public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return KeyPair(RSA, private, base64.b64encode(public).decode("ascii"))
    if algorithm == ED25519:
        key = nacl.signing.SigningKey.generate()
        # RFC 8463 §4.2: p= is the base64 of the raw 32-octet public key.
        return KeyPair(
            ED25519, base64.b64encode(bytes(key)).decode("ascii"), base64.b64encode(bytes(key.verify_key)).decode("ascii")
        )
    raise ValueError(f"unknown DKIM key algorithm {algorithm!r}")


def signature_algorithm(algorithm: str) -> bytes:
    """The a= of a signature made with a key of this kind (RFC 6376 §3.3, RFC 8463 §3)."""
    return b"ed25519-sha256" if algorithm == ED25519 else b"rsa-sha256"


def key_record(algorithm: str, public: str) -> str:
    """The TXT value at `<selector>._domainkey.<domain>` (RFC 6376 §3.6.1)."""
    return f"v=DKIM1; k={algorithm}; p={public}"


def zone_txt(value: str) -> str:
    """A TXT value in zone-file form: quoted strings of at most 255 octets (RFC 1035 §3.3.14)."""
    pieces = [value[i : i + 255] for i in range(0, len(value), 255)] or [""]
    return " ".join('"' + piece.replace("\\", "\\\\").replace('"', '\\"') + '"' for piece in pieces)
