#!/usr/bin/env python3
"""Puts misbehaving TCP segments on the wire to a guest, for tests of the guest's TCP receive path.

    tap-meddle.py TAP PORT

Watches the frames the host kernel sends out of TAP (to the guest) through a packet socket, and
for every TCP segment from source port PORT injects, right behind it:
  - "dup":    an exact copy (what a retransmission looks like): must be ACKed again and dropped;
and for every one carrying data (S = its sequence number, L = its length):
  - "badsum": a segment at S + L, the next sequence number the guest will expect, with a wrong
              TCP checksum and junk data: must be dropped (taken, it would corrupt the stream);
  - "ooo":    a segment at S + L + 1000 with a correct checksum and junk data (out of order):
              must not be taken.
The real next segment comes later (the test server pauses between writes), so a guest that takes
either forged segment ends up with junk in its response.

Prints "ready" once the socket is bound, then one JSON line per injection: {"kind", "seq", "len"}.
Runs until killed.
"""
import json
import socket
import struct
import sys

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def forge(frame, ip_off, ihl, seq, payload, good_checksum):
    """A copy of the frame's Ethernet, IPv4 and TCP headers with a new sequence number and payload."""
    ip = bytearray(frame[ip_off:ip_off + ihl])
    tcp_off = ip_off + ihl
    doff = (frame[tcp_off + 12] >> 4) * 4
    tcp = bytearray(frame[tcp_off:tcp_off + doff]) + payload
    tcp[13] &= ~0x01 & 0xFF  # no FIN on a forged segment
    struct.pack_into("!I", tcp, 4, seq)
    struct.pack_into("!H", ip, 2, ihl + len(tcp))
    struct.pack_into("!H", ip, 10, 0)
    struct.pack_into("!H", ip, 10, checksum(bytes(ip)))
    struct.pack_into("!H", tcp, 16, 0)
    pseudo = bytes(ip[12:20]) + struct.pack("!BBH", 0, 6, len(tcp))
    sum_ = checksum(pseudo + bytes(tcp))
    struct.pack_into("!H", tcp, 16, sum_ if good_checksum else sum_ ^ 0x5A5A)
    return frame[:ip_off] + bytes(ip) + bytes(tcp)


def main():
    tap, port = sys.argv[1], int(sys.argv[2])
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((tap, 0))
    print("ready", flush=True)
    injected = set()
    while True:
        frame, addr = s.recvfrom(65535)
        if addr[2] != PACKET_OUTGOING or frame in injected or len(frame) < 34:
            continue
        if frame[12:14] != b"\x08\x00" or frame[23] != 6:
            continue
        ihl = (frame[14] & 15) * 4
        tcp_off = 14 + ihl
        total = struct.unpack("!H", frame[16:18])[0]
        frame = frame[:14 + total]  # without Ethernet padding
        sport, _dport, seq = struct.unpack("!HHI", frame[tcp_off:tcp_off + 8])
        if sport != port:
            continue
        doff = (frame[tcp_off + 12] >> 4) * 4
        length = total - ihl - doff
        out = [("dup", seq, length, frame)]
        if length > 0:
            junk = b"JUNK" * 8
            out.append(("badsum", (seq + length) & 0xFFFFFFFF, len(junk), forge(frame, 14, ihl, (seq + length) & 0xFFFFFFFF, junk, False)))
            out.append(("ooo", (seq + length + 1000) & 0xFFFFFFFF, len(junk), forge(frame, 14, ihl, (seq + length + 1000) & 0xFFFFFFFF, junk, True)))
        for kind, sq, ln, f in out:
            injected.add(f)
            s.send(f)
            print(json.dumps({"kind": kind, "seq": sq, "len": ln}), flush=True)


if __name__ == "__main__":
    main()
