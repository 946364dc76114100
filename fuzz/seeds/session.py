#!/usr/bin/env python3
"""Writes the seed inputs of the `session` fuzz target into seeds/session/.

An input is one mode byte (even: sent after a login, odd: sent from the connection's first
byte) followed by the bytes to send. The seeds are well-formed PDUs, so the fuzzer starts
from every request type instead of having to discover the 48-byte header."""
import os

TARGET = b"iqn.2026-01.org.shadowlun:fuzz"
INITIATOR = b"iqn.2026-01.org.shadowlun:fuzzer"


def pdu(opcode, flags, itt, cmd_sn=1, lun=0, f20=0, f28=0, f36=0, f40=0, cdb=b"", data=b"", immediate=False, isid=b""):
    h = bytearray(48)
    h[0] = opcode | (0x40 if immediate else 0)
    h[1] = flags
    h[5:8] = len(data).to_bytes(3, "big")
    if isid:
        h[8:14] = isid
    else:
        h[8:16] = lun.to_bytes(8, "big")
    h[16:20] = itt.to_bytes(4, "big")
    h[20:24] = f20.to_bytes(4, "big")
    h[24:28] = cmd_sn.to_bytes(4, "big")
    h[28:32] = f28.to_bytes(4, "big")
    h[32:48] = cdb.ljust(16, b"\0")[:16] if cdb else bytes(h[32:36]) + f36.to_bytes(4, "big") + f40.to_bytes(4, "big") + bytes(4)
    return bytes(h) + data + b"\0" * (-len(data) % 4)


def rw10(op, lba, blocks):
    return bytes([op, 0]) + lba.to_bytes(4, "big") + b"\0" + blocks.to_bytes(2, "big") + b"\0"


seeds = {
    "nop-ping": b"\0" + pdu(0x00, 0x80, 5, immediate=True, f20=0xFFFFFFFF, data=b"ping"),
    "read10": b"\0" + pdu(0x01, 0xC1, 6, f20=512, cdb=rw10(0x28, 0, 1)),
    "write10-immediate": b"\0" + pdu(0x01, 0xA1, 7, f20=512, cdb=rw10(0x2A, 1, 1), data=b"\xa5" * 512),
    "write10-r2t-data-out": b"\0"
    + pdu(0x01, 0xA1, 8, f20=2048, cdb=rw10(0x2A, 2, 4))
    + pdu(0x05, 0x80, 8, cmd_sn=0, f20=1, f36=0, f40=0, data=b"\x5a" * 2048),
    "inquiry-vpd83": b"\0" + pdu(0x01, 0xC1, 9, f20=255, cdb=bytes([0x12, 1, 0x83, 0, 255, 0])),
    "report-luns": b"\0" + pdu(0x01, 0xC1, 10, f20=64, cdb=bytes([0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0])),
    "abort-task": b"\0" + pdu(0x02, 0x81, 11, immediate=True, f20=6),
    "text-sendtargets": b"\0" + pdu(0x04, 0x80, 12, f20=0xFFFFFFFF, data=b"SendTargets=All\0"),
    "logout": b"\0" + pdu(0x06, 0x80, 13, immediate=True),
    "login": b"\x01"
    + pdu(0x03, 0x87, 1, immediate=True, isid=b"\x40\0\0\0\xff\x01",
          data=b"InitiatorName=" + INITIATOR + b"\0TargetName=" + TARGET + b"\0SessionType=Normal\0HeaderDigest=CRC32C,None\0MaxRecvDataSegmentLength=8192\0"),
    "login-chap": b"\x01"
    + pdu(0x03, 0x01, 1, immediate=True, isid=b"\x40\0\0\0\xff\x02",
          data=b"InitiatorName=" + INITIATOR + b"\0TargetName=" + TARGET + b"\0AuthMethod=CHAP,None\0"),
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "session")
os.makedirs(out, exist_ok=True)
for name, body in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(body)
