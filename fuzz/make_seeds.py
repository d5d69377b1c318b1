#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/seeds/ (run from the repository root: python3 fuzz/make_seeds.py).

sip_msg: the RFC 4475 torture messages (tests/data/rfc4475) plus the requests and responses of a
         real call (shaped as tests/sip_endpoint.rs sends them).
sdp:     the SDP fixtures (tests/data/sdp) plus mohd's own offer and answer (plain and SRTP), an
         SAVP offer with good and malformed a=crypto lines, and an Opus offer with garbage fmtp.
sdp_crypto: a=crypto values (one per line): RFC 4568's examples, each suite, refused lines.
endpoint: whole exchanges, datagrams separated by NUL (see fuzz_targets/endpoint.rs for MOHTAG,
         MOHBRANCH, empty datagrams = 5 s, the 0x01..0x03 flag byte and the leading 0x04).
"""
import pathlib
import shutil

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEEDS = ROOT / "fuzz" / "seeds"

OFFER = ("v=0\r\no=- 1 1 IN IP4 192.0.2.50\r\ns=-\r\nc=IN IP4 192.0.2.50\r\nt=0 0\r\n"
         "m=audio 30000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
         "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n")
HOLD = OFFER.replace("a=sendrecv", "a=sendonly")
ANSWER = ("v=0\r\no=- 2 2 IN IP4 192.0.2.50\r\ns=-\r\nc=IN IP4 192.0.2.50\r\nt=0 0\r\n"
          "m=audio 30002 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=recvonly\r\n")
OUR_ANSWER = ("v=0\r\no=mohd 1111 2222 IN IP4 192.0.2.10\r\ns=mohd\r\nc=IN IP4 192.0.2.10\r\n"
              "t=0 0\r\nm=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
              "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendonly\r\n")
OUR_OFFER = ("v=0\r\no=mohd 1111 2222 IN IP4 192.0.2.10\r\ns=mohd\r\nc=IN IP4 192.0.2.10\r\n"
             "t=0 0\r\nm=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\n"
             "a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n"
             "a=ptime:20\r\na=sendonly\r\n")


def body_part(body):
    ctype = "Content-Type: application/sdp\r\n" if body else ""
    return f"{ctype}Content-Length: {len(body.encode())}\r\n\r\n{body}"


def invite(branch, call_id, body, extra=""):
    return ("INVITE sip:moh@192.0.2.10 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 192.0.2.50:5070;branch={branch};rport\r\nMax-Forwards: 70\r\n{extra}"
            "From: <sip:pbx@192.0.2.50>;tag=ft1\r\nTo: <sip:moh@192.0.2.10>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 10 INVITE\r\nContact: <sip:pbx@192.0.2.50:5070>\r\n"
            + body_part(body))


def in_dialog(method, cseq, branch, call_id, tag, body="", extra=""):
    return (f"{method} sip:pbx@192.0.2.50:5070 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 192.0.2.50:5070;branch={branch};rport\r\nMax-Forwards: 70\r\n{extra}"
            f"From: <sip:pbx@192.0.2.50>;tag=ft1\r\nTo: <sip:moh@192.0.2.10>;tag={tag}\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n" + body_part(body))


def cancel(branch, call_id):
    return ("CANCEL sip:moh@192.0.2.10 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 192.0.2.50:5070;branch={branch};rport\r\nMax-Forwards: 70\r\n"
            "From: <sip:pbx@192.0.2.50>;tag=ft1\r\nTo: <sip:moh@192.0.2.10>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 10 CANCEL\r\nContent-Length: 0\r\n\r\n")


def options(branch):
    return ("OPTIONS sip:moh@192.0.2.10 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 192.0.2.50:5070;branch={branch}\r\nMax-Forwards: 70\r\n"
            "From: <sip:pbx@192.0.2.50>;tag=ft1\r\nTo: <sip:moh@192.0.2.10>\r\n"
            f"Call-ID: x{branch}\r\nCSeq: 1 OPTIONS\r\nAccept: application/sdp\r\nContent-Length: 0\r\n\r\n")


def response(code, reason, method, cseq, call_id, branch, via_host="192.0.2.10:5060",
             to_tag="MOHTAG", from_tag="ft1", extra="", body=""):
    return (f"SIP/2.0 {code} {reason}\r\n"
            f"Via: SIP/2.0/UDP {via_host};branch={branch};rport=5060;received=192.0.2.10\r\n"
            f"From: <sip:moh@192.0.2.10>;tag={to_tag}\r\nTo: <sip:pbx@192.0.2.50>;tag={from_tag}\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n{extra}" + body_part(body))


def write(target, name, data):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def seq(*datagrams):
    return b"\x00".join(d if isinstance(d, bytes) else d.encode() for d in datagrams)


def main():
    if SEEDS.exists():
        shutil.rmtree(SEEDS)

    # sip_msg
    for f in sorted((ROOT / "tests/data/rfc4475").glob("*.dat")):
        write("sip_msg", f.name, f.read_bytes())
    write("sip_msg", "invite_sdp.sip", invite("z9hG4bKa1", "c1", OFFER))
    write("sip_msg", "invite_late_offer_timer.sip",
          invite("z9hG4bKa2", "c2", "", "Supported: timer\r\nSession-Expires: 1800;refresher=uac\r\nMin-SE: 90\r\n"))
    write("sip_msg", "ack.sip", in_dialog("ACK", 10, "z9hG4bKack", "c1", "abc123"))
    write("sip_msg", "bye.sip", in_dialog("BYE", 11, "z9hG4bKbye", "c1", "abc123"))
    write("sip_msg", "cancel.sip", cancel("z9hG4bKa1", "c1"))
    write("sip_msg", "options_lf_only.sip", options("z9hG4bKo1").replace("\r\n", "\n"))
    write("sip_msg", "reinvite_hold.sip", in_dialog("INVITE", 12, "z9hG4bKre", "c1", "abc123", HOLD))
    write("sip_msg", "update_refresh.sip",
          in_dialog("UPDATE", 13, "z9hG4bKup", "c1", "abc123", "", "Supported: timer\r\nSession-Expires: 90;refresher=uac\r\n"))
    write("sip_msg", "resp_100.sip", response(100, "Trying", "INVITE", 10, "c1", "z9hG4bKa1", "192.0.2.50:5070", "", "ft1"))
    write("sip_msg", "resp_200_sdp.sip",
          response(200, "OK", "INVITE", 10, "c1", "z9hG4bKa1", "192.0.2.50:5070", "abc123", "ft1",
                   "Contact: <sip:moh@192.0.2.10:5060>\r\nSession-Expires: 1800;refresher=uas\r\nRequire: timer\r\n", OUR_ANSWER))
    write("sip_msg", "resp_487.sip", response(487, "Request Terminated", "INVITE", 10, "c1", "z9hG4bKa1"))
    write("sip_msg", "resp_491_compact.sip",
          "SIP/2.0 491 Request Pending\r\nv: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKx\r\n"
          "f: <sip:moh@192.0.2.10>;tag=a\r\nt: <sip:pbx@192.0.2.50>;tag=b\r\ni: c1\r\nCSeq: 2 INVITE\r\nl: 0\r\n\r\n")

    # sdp
    for f in sorted((ROOT / "tests/data/sdp").glob("*.sdp")):
        write("sdp", f.name, f.read_bytes())
    write("sdp", "mohd_offer.sdp", OUR_OFFER)
    write("sdp", "mohd_answer.sdp", OUR_ANSWER)
    write("sdp", "late_answer.sdp", ANSWER)
    write("sdp", "hold.sdp", HOLD)
    k30 = "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR"
    k28 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGw=="
    savp_mixed = OFFER.replace("RTP/AVP", "RTP/SAVP").replace(
        "a=ptime:20",
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:!!notbase64!!\r\n"
        f"a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:{k30}|2^20|1:4\r\n"
        f"a=crypto:3 AEAD_AES_128_GCM inline:{k30}\r\n"
        f"a=crypto:4 AEAD_AES_128_GCM inline:{k28}\r\n"
        f"a=crypto:5 AES_CM_128_HMAC_SHA1_32 inline:{k30} WSH=64\r\na=ptime:20")
    write("sdp", "savp_mixed_crypto.sdp", savp_mixed)
    write("sdp", "opus_garbage_fmtp.sdp", OFFER.replace(
        "RTP/AVP 0 8 101", "RTP/AVP 107 0 101").replace(
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:107 opus/48000/2\r\na=fmtp:107 maxplaybackrate=banana;stereo=2;"
        "maxaveragebitrate=99999999999999999999;;=;useinbandfec\r\na=rtpmap:0 PCMU/8000"))
    write("sdp", "mohd_srtp_offer.sdp", OUR_OFFER.replace("RTP/AVP", "RTP/SAVP").replace(
        "a=ptime:20",
        f"a=crypto:1 AEAD_AES_128_GCM inline:{k28}\r\n"
        f"a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:{k30}\r\n"
        f"a=crypto:3 AES_CM_128_HMAC_SHA1_32 inline:{k30}\r\na=ptime:20"))

    # sdp_crypto
    key30 = "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR"
    key28 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGw=="
    write("sdp_crypto", "rfc4568_lifetime_mki",
          f"1 AES_CM_128_HMAC_SHA1_80 inline:{key30}|2^20|1:32\n"
          f"2 AES_CM_128_HMAC_SHA1_32 inline:{key30}|2^20|1:4;inline:{key30}|2^20|2:4 FEC_ORDER=FEC_SRTP\n")
    write("sdp_crypto", "each_suite",
          f"1 AEAD_AES_128_GCM inline:{key28}\n2 AES_CM_128_HMAC_SHA1_80 inline:{key30}|2^31\n"
          f"3 AES_CM_128_HMAC_SHA1_32 inline:{key30} WSH=64\n")
    write("sdp_crypto", "refused",
          f"1 AES_256_CM_HMAC_SHA1_80 inline:{key30}\n2 AES_CM_128_HMAC_SHA1_80 inline:{key30} UNENCRYPTED_SRTP\n"
          f"3 AEAD_AES_128_GCM inline:{key30}\n4 AES_CM_128_HMAC_SHA1_80 inline:{key30}|2^49\n")

    # endpoint
    b, c = "z9hG4bKe1", "e1"
    ack = in_dialog("ACK", 10, "z9hG4bKack", c, "MOHTAG")
    write("endpoint", "invite_only", invite(b, c, OFFER))
    write("endpoint", "invite_savp", invite(b, c, OFFER.replace("RTP/AVP", "RTP/SAVP").replace(
        "a=ptime:20",
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\na=ptime:20")))
    write("endpoint", "invite_ack_bye", seq(invite(b, c, OFFER), ack, in_dialog("BYE", 11, "z9hG4bKbye", c, "MOHTAG")))
    write("endpoint", "invite_retransmit_ack", seq(invite(b, c, OFFER), b"", invite(b, c, OFFER), ack, ack))
    # 0x04 first: answer after 2 s of ringing, so the CANCEL gets there first.
    write("endpoint", "invite_cancel_ack487",
          b"\x04" + seq(invite(b, c, OFFER), cancel(b, c),
              in_dialog("ACK", 10, b, c, "MOHTAG").replace("sip:pbx@192.0.2.50:5070", "sip:moh@192.0.2.10", 1)))
    write("endpoint", "ringing_then_answer", b"\x04" + seq(invite(b, c, OFFER), b"", ack))
    write("endpoint", "late_offer_ack_answer", seq(invite(b, c, ""), in_dialog("ACK", 10, "z9hG4bKack", c, "MOHTAG", ANSWER)))
    write("endpoint", "reinvite_hold_unhold",
          seq(invite(b, c, OFFER), ack, in_dialog("INVITE", 11, "z9hG4bKre1", c, "MOHTAG", HOLD),
              in_dialog("ACK", 11, "z9hG4bKack2", c, "MOHTAG"),
              in_dialog("INVITE", 12, "z9hG4bKre2", c, "MOHTAG", OFFER),
              in_dialog("ACK", 12, "z9hG4bKack3", c, "MOHTAG")))
    write("endpoint", "reinvite_glare_491",
          seq(invite(b, c, OFFER), in_dialog("INVITE", 11, "z9hG4bKre1", c, "MOHTAG", HOLD), ack))
    write("endpoint", "update_with_sdp",
          seq(invite(b, c, OFFER), ack,
              in_dialog("UPDATE", 11, "z9hG4bKup1", c, "MOHTAG", HOLD, "Supported: timer\r\nSession-Expires: 90;refresher=uac\r\n")))
    # We refresh (Session-Expires without Supported: timer): UPDATE at 45 s, answered 200.
    write("endpoint", "we_refresh_answered",
          seq(invite(b, c, OFFER, "Session-Expires: 90\r\nAllow: INVITE, ACK, BYE, CANCEL, UPDATE\r\n"), ack,
              *([b""] * 9),
              response(200, "OK", "UPDATE", 1, c, "MOHBRANCH", extra="Session-Expires: 90;refresher=uas\r\n")))
    # Max call length (60 s in the harness): our BYE, answered 200.
    write("endpoint", "max_duration_bye_answered",
          seq(invite(b, c, OFFER), ack, *([b""] * 13), response(200, "OK", "BYE", 1, c, "MOHBRANCH")))
    write("endpoint", "options_ipv6_tcp", b"\x03" + options("z9hG4bKo1").encode())
    write("endpoint", "invite_tcp_record_route",
          seq(b"\x02" + invite(b, c, OFFER, "Record-Route: <sip:192.0.2.77;lr>\r\n").encode(),
              b"\x02" + ack.encode(), b"\x02" + in_dialog("BYE", 11, "z9hG4bKbye", c, "MOHTAG").encode()))
    for name in ["TC_INVUT_V.dat", "TC_SDP01_V.dat", "TC_BADINV01_I.dat", "TC_ESC01_V.dat",
                 "TC_LWSDISP_V.dat", "TC_INSUF_I.dat", "TC_UNKSCM_V.dat", "TC_MISMATCH01_V.dat",
                 "TC_WSINV.dat", "TC_TRANSPORTS_V.dat", "TC_CPARAM01_V.dat", "TC_DBLREQ.dat"]:
        write("endpoint", name, (ROOT / "tests/data/rfc4475" / name).read_bytes())


if __name__ == "__main__":
    main()
