#!/usr/bin/env python3
"""The independent SRTP peer for tests/srtp_interop.rs: libsrtp (bundled by PyPI pylibsrtp).

Reads one JSON job on stdin, writes one JSON reply on stdout:

  {"op": "unprotect" | "protect", "suite": "<RFC 4568 name>", "key": "<hex key||salt>",
   "rtp": ["<hex packet>", ...], "rtcp": ["<hex packet>", ...]}

"unprotect" decrypts packets mohd protected (libsrtp as the receiver, any inbound SSRC);
"protect" protects plaintext packets for mohd to decrypt (libsrtp as the sender). The reply has
the same lists, each packet as hex, or {"error": "..."} for the first packet libsrtp refused.
Packets are processed in order, so a run across the sequence wrap exercises libsrtp's ROC.
"""
import json
import sys

import pylibsrtp

PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    "AEAD_AES_128_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
}


def main():
    job = json.load(sys.stdin)
    protecting = job["op"] == "protect"
    policy = pylibsrtp.Policy(
        key=bytes.fromhex(job["key"]),
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND if protecting else pylibsrtp.Policy.SSRC_ANY_INBOUND,
        srtp_profile=PROFILES[job["suite"]],
    )
    session = pylibsrtp.Session(policy)
    reply = {"rtp": [], "rtcp": []}
    try:
        for kind in ("rtp", "rtcp"):
            for i, packet in enumerate(job[kind]):
                data = bytes.fromhex(packet)
                if kind == "rtp":
                    out = session.protect(data) if protecting else session.unprotect(data)
                else:
                    out = session.protect_rtcp(data) if protecting else session.unprotect_rtcp(data)
                reply[kind].append(out.hex())
    except pylibsrtp.Error as e:
        reply = {"error": f"{kind} packet {i}: {e}"}
    json.dump(reply, sys.stdout)


if __name__ == "__main__":
    main()
