"""A small Haberci protocol v1 client in Python, written from docs/PROTOCOL.md alone.

It exists to test the gateway from outside Rust: nothing here is generated from, or shares
code with, the Rust `wire` crate. Three layers:

- codec: a hand-written protobuf subset (varints, LEN fields) for the frames of
  docs/PROTOCOL.md Appendix A, the stream framing (varint length prefix), the field rules of
  "Encoding conventions", and the JSON forms the golden vectors use. Frames are plain dicts
  in the *JSON form* of the spec ({"kind": "send", "clientMsgId": "...", ...}) so that the
  golden vectors, the test runner and an external peer speaking JSON all use one shape.
- transports: WebSocket (`websockets`), WebTransport over HTTP/3 and native QUIC (`aioquic`).
- Session: Hello/Welcome, Ping/Pong heartbeat, Send -> Sent, Ack/Read, Closing.

Self-test against the golden vectors: `python haberci_client.py --self-test [VECTORS_DIR]`
(or test_vectors.py). External-peer mode (JSON lines on stdin/stdout, see interop.py):
`python haberci_client.py --stdio-peer`.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import os
import random
import ssl
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME_SIZE = 65536
MAX_SEQ = 2**53 - 1
MIN_TS = -62_167_219_200_000
MAX_TS = 253_402_300_799_999
WS_SUBPROTOCOL = "haberci.v1"
QUIC_ALPN = "haberci/1"

# ---------------------------------------------------------------------------------------------
# Error codes (PROTOCOL.md "Errors and close codes")
# ---------------------------------------------------------------------------------------------

# code -> (name, fatal)
CODES: dict[int, tuple[str, bool]] = {
    1: ("bad_frame", True),
    2: ("frame_too_large", True),
    3: ("invalid_field", False),
    4: ("unknown_frame_kind", False),
    5: ("unsupported_version", True),
    6: ("unauthenticated", True),
    7: ("token_expired", True),
    8: ("forbidden", False),
    9: ("unknown_recipient", False),
    10: ("content_too_large", False),
    11: ("rate_limited", False),
    12: ("slow_consumer", True),
    13: ("server_draining", True),
    14: ("unavailable", False),
    15: ("internal", True),
    16: ("text_message_refused", True),
    17: ("idle_timeout", True),
    18: ("blocked", False),
    19: ("media_refused", False),
    20: ("too_many_sessions", True),
}
# The highest code this client knows: sent as Hello.max_error_code (0 = 17, the first v1
# table), so the server may send every code above.
MAX_ERROR_CODE = max(CODES)
CODE_BY_NAME = {name: code for code, (name, _) in CODES.items()}


def quic_app_code(code: int) -> int:
    return code


def websocket_close_code(code: int) -> int:
    return 4000 + code


class ProtocolError(Exception):
    """What a receiver must raise for bad input: a protocol code name, and for invalid_field
    the proto field at fault ("Send.type") and the client_msg_id an Error would name."""

    def __init__(self, code: str, detail: str = "", field: Optional[str] = None,
                 client_msg_id: Optional[str] = None):
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.field = field
        self.client_msg_id = client_msg_id

    @property
    def protocol_code(self) -> int:
        return CODE_BY_NAME[self.code]

    @property
    def fatal(self) -> bool:
        return CODES[self.protocol_code][1]


# ---------------------------------------------------------------------------------------------
# Protobuf primitives
# ---------------------------------------------------------------------------------------------

WT_VARINT, WT_I64, WT_LEN, WT_I32 = 0, 1, 2, 5


def encode_varint(value: int) -> bytes:
    if value < 0:
        value &= (1 << 64) - 1  # two's complement, as protobuf encodes negative int64
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def decode_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Returns (value, new_pos). A truncated or >64-bit varint is bad_frame."""
    result = 0
    shift = 0
    for i in range(10):
        if pos >= len(buf):
            raise ProtocolError("bad_frame", "truncated varint")
        b = buf[pos]
        pos += 1
        if i == 9 and b > 1:
            raise ProtocolError("bad_frame", "varint overflows 64 bits")
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
    raise ProtocolError("bad_frame", "varint longer than 10 bytes")


def _key(num: int, wt: int) -> bytes:
    return encode_varint((num << 3) | wt)


def _len_field(num: int, data: bytes) -> bytes:
    return _key(num, WT_LEN) + encode_varint(len(data)) + data


def iter_fields(buf: bytes):
    """Yields (field_number, wire_type, value); value is int for VARINT/I64/I32, bytes for LEN.
    Anything that is not protobuf is bad_frame."""
    pos = 0
    n = len(buf)
    while pos < n:
        key, pos = decode_varint(buf, pos)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise ProtocolError("bad_frame", "field number 0")
        if wt == WT_VARINT:
            val, pos = decode_varint(buf, pos)
        elif wt == WT_I64:
            if pos + 8 > n:
                raise ProtocolError("bad_frame", "truncated fixed64")
            val = int.from_bytes(buf[pos:pos + 8], "little")
            pos += 8
        elif wt == WT_I32:
            if pos + 4 > n:
                raise ProtocolError("bad_frame", "truncated fixed32")
            val = int.from_bytes(buf[pos:pos + 4], "little")
            pos += 4
        elif wt == WT_LEN:
            ln, pos = decode_varint(buf, pos)
            if pos + ln > n:
                raise ProtocolError("bad_frame", "truncated length-delimited field")
            val = bytes(buf[pos:pos + ln])
            pos += ln
        else:  # groups (3, 4) and 6, 7 are not in this schema: not our protobuf
            raise ProtocolError("bad_frame", f"wire type {wt}")
        yield num, wt, val


# ---------------------------------------------------------------------------------------------
# Schema (PROTOCOL.md Appendix A). Field: number -> (json name, type, repeated)
# types: uint32 uint64 int64 bool string bytes enum:<Name> msg:<Name>
# ---------------------------------------------------------------------------------------------

ENUMS = {
    "MessageType": {1: "text", 2: "image", 3: "video", 4: "audio", 5: "file"},
    "MessageStatus": {1: "sent", 2: "delivered", 3: "read"},
    "TypingState": {1: "started", 2: "stopped"},
    "NotificationType": {1: "follow", 2: "follow_request", 3: "like", 4: "comment",
                         5: "mention", 6: "repost"},
}

S = {
    "Recipient": {1: ("userId", "bytes", False), 2: ("groupId", "bytes", False)},
    "MediaRef": {1: ("mediaId", "bytes", False), 2: ("contentType", "string", False),
                 3: ("sizeBytes", "uint64", False)},
    "Message": {1: ("id", "bytes", False), 2: ("senderId", "bytes", False),
                3: ("recipientId", "bytes", False), 4: ("type", "enum:MessageType", False),
                5: ("content", "string", False), 6: ("timestamp", "int64", False),
                7: ("status", "enum:MessageStatus", False), 8: ("conversationId", "bytes", False),
                9: ("seq", "uint64", False), 10: ("media", "msg:MediaInfo", False)},
    "MediaInfo": {1: ("mediaId", "bytes", False), 2: ("contentType", "string", False),
                  3: ("sizeBytes", "uint64", False), 4: ("width", "uint32", False),
                  5: ("height", "uint32", False), 6: ("durationMs", "uint64", False),
                  7: ("blurhash", "string", False), 8: ("filename", "string", False)},
    # client
    "Hello": {1: ("accessToken", "string", False), 2: ("protocolVersion", "uint32", False),
              3: ("clientName", "string", False), 4: ("clientVersion", "string", False),
              5: ("resume", "msg:ResumePosition", True), 6: ("maxErrorCode", "uint32", False)},
    "ResumePosition": {1: ("conversationId", "bytes", False), 2: ("lastSeq", "uint64", False)},
    "Send": {1: ("clientMsgId", "bytes", False), 2: ("recipient", "msg:Recipient", False),
             3: ("type", "enum:MessageType", False), 4: ("content", "string", False),
             5: ("media", "msg:MediaRef", False)},
    "Ack": {1: ("conversationId", "bytes", False), 2: ("seq", "uint64", False)},
    "Read": {1: ("conversationId", "bytes", False), 2: ("seq", "uint64", False)},
    "ClientTyping": {1: ("conversationId", "bytes", False), 2: ("state", "enum:TypingState", False)},
    "PresenceWatch": {1: ("userIds", "bytes", True)},
    "RefreshAuth": {1: ("accessToken", "string", False)},
    "Ping": {1: ("nonce", "uint32", False)},
    # server
    "Welcome": {1: ("sessionId", "bytes", False), 2: ("userId", "bytes", False),
                3: ("protocolVersion", "uint32", False), 4: ("serverTime", "int64", False),
                5: ("tokenExpiresAt", "int64", False), 6: ("limits", "msg:Limits", False)},
    "Limits": {1: ("maxFrameSize", "uint32", False), 2: ("sendRatePerSec", "uint32", False),
               3: ("sendBurst", "uint32", False), 4: ("idleTimeoutMs", "uint32", False)},
    "Sent": {1: ("clientMsgId", "bytes", False), 2: ("messageId", "bytes", False),
             3: ("conversationId", "bytes", False), 4: ("seq", "uint64", False),
             5: ("timestamp", "int64", False)},
    "Status": {1: ("conversationId", "bytes", False), 2: ("userId", "bytes", False),
               3: ("deliveredSeq", "uint64", False), 4: ("readSeq", "uint64", False)},
    "ServerTyping": {1: ("conversationId", "bytes", False), 2: ("userId", "bytes", False),
                     3: ("state", "enum:TypingState", False)},
    "Presence": {1: ("userId", "bytes", False), 2: ("online", "bool", False),
                 3: ("lastSeen", "int64", False)},
    "Error": {1: ("code", "uint32", False), 2: ("message", "string", False),
              3: ("clientMsgId", "bytes", False)},
    "Closing": {1: ("code", "uint32", False), 2: ("reason", "string", False),
                3: ("retryAfterMs", "uint32", False), 4: ("supportedVersions", "uint32", True)},
    "Pong": {1: ("nonce", "uint32", False)},
    "Notification": {1: ("id", "bytes", False), 2: ("type", "enum:NotificationType", False),
                     3: ("actorId", "bytes", False), 4: ("actorUsername", "string", False),
                     5: ("postId", "bytes", False), 6: ("commentId", "bytes", False),
                     7: ("createdAt", "int64", False), 8: ("unreadCount", "uint32", False)},
}

# oneof frame: number -> (kind, message)
CLIENT_KINDS = {1: ("hello", "Hello"), 2: ("send", "Send"), 3: ("ack", "Ack"), 4: ("read", "Read"),
                5: ("typing", "ClientTyping"), 6: ("presenceWatch", "PresenceWatch"),
                7: ("refreshAuth", "RefreshAuth"), 8: ("ping", "Ping")}
SERVER_KINDS = {1: ("welcome", "Welcome"), 2: ("message", "Message"), 3: ("sent", "Sent"),
                4: ("status", "Status"), 5: ("typing", "ServerTyping"), 6: ("presence", "Presence"),
                7: ("error", "Error"), 8: ("closing", "Closing"), 9: ("pong", "Pong"),
                10: ("notification", "Notification")}
CLIENT_KIND_NUM = {k: (n, m) for n, (k, m) in CLIENT_KINDS.items()}
SERVER_KIND_NUM = {k: (n, m) for n, (k, m) in SERVER_KINDS.items()}

# MediaInfo string limits (PROTOCOL.md "Frames"): content_type and filename in UTF-8 bytes,
# blurhash in characters (code points).
MAX_MEDIA_CONTENT_TYPE_BYTES = 255
MAX_MEDIA_BLURHASH_CHARS = 100
MAX_MEDIA_FILENAME_BYTES = 255

_DEFAULTS = {"uint32": 0, "uint64": 0, "int64": 0, "bool": False, "string": "", "bytes": b""}


def _default(typ: str):
    if typ.startswith("enum:"):
        return 0
    if typ.startswith("msg:"):
        return None
    return _DEFAULTS[typ]


def decode_message(name: str, buf: bytes) -> dict:
    """Raw decode into {jsonName: python value}: ints, bytes, str, bool, nested dicts, lists.
    Missing fields get their proto3 default (None for a message field)."""
    schema = S[name]
    out: dict[str, Any] = {}
    for num, (fname, typ, rep) in schema.items():
        out[fname] = [] if rep else _default(typ)
    for num, wt, val in iter_fields(buf):
        spec = schema.get(num)
        if spec is None:
            continue  # unknown field: ignored
        fname, typ, rep = spec
        if typ in ("string", "bytes") or typ.startswith("msg:"):
            if wt != WT_LEN:
                raise ProtocolError("bad_frame", f"{name}.{fname}: wrong wire type {wt}")
            if typ == "string":
                try:
                    v: Any = val.decode("utf-8")
                except UnicodeDecodeError:
                    raise ProtocolError("bad_frame", f"{name}.{fname}: invalid UTF-8")
            elif typ == "bytes":
                v = val
            else:
                v = decode_message(typ[4:], val)
            if rep:
                out[fname].append(v)
            else:
                out[fname] = v
            continue
        # scalar numeric
        if wt == WT_LEN and rep:  # packed repeated
            pos = 0
            while pos < len(val):
                x, pos = decode_varint(val, pos)
                out[fname].append(_scalar(typ, x))
            continue
        if wt != WT_VARINT:
            raise ProtocolError("bad_frame", f"{name}.{fname}: wrong wire type {wt}")
        v = _scalar(typ, val)
        if rep:
            out[fname].append(v)
        else:
            out[fname] = v
    return out


def _scalar(typ: str, x: int):
    if typ == "uint32" or typ.startswith("enum:"):
        x &= 0xFFFFFFFF
        if typ.startswith("enum:") and x >= 2**31:
            x -= 2**32  # int32
        return x
    if typ == "uint64":
        return x
    if typ == "int64":
        return x - 2**64 if x >= 2**63 else x
    if typ == "bool":
        return x != 0
    raise AssertionError(typ)


def encode_message(name: str, value: dict) -> bytes:
    """Encode {jsonName: python value} in field-number order, omitting defaults (what the
    golden vectors expect). Repeated scalars are packed."""
    schema = S[name]
    out = bytearray()
    for num in sorted(schema):
        fname, typ, rep = schema[num]
        v = value.get(fname)
        if v is None:
            continue
        items = v if rep else [v]
        if rep and not typ.startswith("msg:") and typ not in ("string", "bytes"):
            if items:
                packed = b"".join(encode_varint(int(x)) for x in items)
                out += _len_field(num, packed)
            continue
        for item in items:
            if typ == "string":
                if item == "" and not rep:
                    continue
                out += _len_field(num, item.encode("utf-8"))
            elif typ == "bytes":
                if item == b"" and not rep:
                    continue
                out += _len_field(num, bytes(item))
            elif typ.startswith("msg:"):
                out += _len_field(num, encode_message(typ[4:], item))
            elif typ == "bool":
                if item:
                    out += _key(num, WT_VARINT) + b"\x01"
            else:
                if item == 0 and not rep:
                    continue
                out += _key(num, WT_VARINT) + encode_varint(int(item))
    return bytes(out)


def _encode_frame(kinds: dict, wire: dict) -> bytes:
    num, msg = kinds[wire["kind"]]
    body = {k: v for k, v in wire.items() if k != "kind"}
    return _len_field(num, encode_message(msg, body))


def _decode_frame(kinds: dict, body: bytes) -> Optional[dict]:
    """Returns {"kind": ..., fields} in wire form (ids as bytes, ints), or None when no known
    oneof case is set. The last oneof field wins, as in protobuf."""
    found = None
    for num, wt, val in iter_fields(body):
        if num in kinds:
            if wt != WT_LEN:
                raise ProtocolError("bad_frame", f"frame field {num}: wrong wire type {wt}")
            found = (num, val)
    if found is None:
        return None
    kind, msg = kinds[found[0]]
    d = decode_message(msg, found[1])
    d["kind"] = kind
    return d


# ---------------------------------------------------------------------------------------------
# Field rules ("Encoding conventions", "Frames"): wire form -> JSON form, raising invalid_field
# ---------------------------------------------------------------------------------------------

def fmt_ts(ms: int) -> str:
    epoch = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
    t = epoch + _dt.timedelta(milliseconds=ms)
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}." \
           f"{t.microsecond // 1000:03d}Z"


def parse_ts(s: str) -> int:
    t = _dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    if t.tzinfo is None:
        raise ValueError(f"timestamp without offset: {s}")
    if t.microsecond % 1000:
        raise ValueError(f"more than millisecond precision: {s}")
    epoch = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
    delta = t - epoch
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


class _V:
    """Converter from wire form to JSON form for one frame, raising invalid_field."""

    def __init__(self, msg: str, client_msg_id: Optional[str] = None):
        self.msg = msg
        self.client_msg_id = client_msg_id

    def bad(self, fname: str, why: str, msg: Optional[str] = None):
        raise ProtocolError("invalid_field", f"{msg or self.msg}.{fname}: {why}",
                            field=f"{msg or self.msg}.{fname}", client_msg_id=self.client_msg_id)

    def id(self, d: dict, fname: str, proto: str, required=True, msg=None) -> Optional[str]:
        v = d[fname]
        if v == b"":
            if required:
                self.bad(proto, "missing", msg)
            return None
        if len(v) != 16:
            self.bad(proto, f"an id is 16 bytes, got {len(v)}", msg)
        if v == bytes(16):
            self.bad(proto, "nil UUID", msg)
        return str(uuid.UUID(bytes=v))

    def seq(self, d: dict, fname: str, proto: str, zero_ok=False, msg=None) -> Optional[int]:
        v = d[fname]
        if v == 0:
            if zero_ok:
                return None
            self.bad(proto, "seq 0", msg)
        if v > MAX_SEQ:
            self.bad(proto, "seq above 2^53-1", msg)
        return v

    def ts(self, d: dict, fname: str, proto: str, zero_none=False, msg=None) -> Optional[str]:
        v = d[fname]
        if zero_none and v == 0:
            return None
        if not MIN_TS <= v <= MAX_TS:
            self.bad(proto, "timestamp out of range", msg)
        return fmt_ts(v)

    def enum(self, d: dict, fname: str, proto: str, enum: str, msg=None) -> str:
        v = d[fname]
        if v not in ENUMS[enum]:
            self.bad(proto, f"unknown or unspecified {enum} {v}", msg)
        return ENUMS[enum][v]

    def string(self, d: dict, fname: str, proto: str, msg=None) -> str:
        if d[fname] == "":
            self.bad(proto, "missing", msg)
        return d[fname]

    def at_most_bytes(self, d: dict, fname: str, proto: str, limit: int, msg=None) -> str:
        n = len(d[fname].encode("utf-8"))
        if n > limit:
            self.bad(proto, f"{n} bytes long, at most {limit} allowed", msg)
        return d[fname]

    def at_most_chars(self, d: dict, fname: str, proto: str, limit: int, msg=None) -> str:
        if len(d[fname]) > limit:
            self.bad(proto, f"{len(d[fname])} characters long, at most {limit} allowed", msg)
        return d[fname]

    def media_info(self, m: dict) -> dict:
        """MediaInfo: 0 and "" are unknown / none (null in JSON), except content_type and
        size_bytes, which stay "" and 0 as MediaRef's do."""
        mi = "MediaInfo"
        return {"mediaId": self.id(m, "mediaId", "media_id", msg=mi),
                "contentType": self.at_most_bytes(m, "contentType", "content_type",
                                                  MAX_MEDIA_CONTENT_TYPE_BYTES, msg=mi),
                "sizeBytes": m["sizeBytes"],
                "width": m["width"] or None, "height": m["height"] or None,
                "durationMs": m["durationMs"] or None,
                "blurhash": self.at_most_chars(m, "blurhash", "blurhash",
                                               MAX_MEDIA_BLURHASH_CHARS, msg=mi) or None,
                "filename": self.at_most_bytes(m, "filename", "filename",
                                               MAX_MEDIA_FILENAME_BYTES, msg=mi) or None}


def _uuid_or_none(v: bytes) -> Optional[str]:
    if len(v) == 16 and v != bytes(16):
        return str(uuid.UUID(bytes=v))
    return None


def client_wire_to_json(w: dict) -> dict:
    if w["kind"] == "hello":
        # Before Welcome nothing is answered with Error: an invalid Hello closes the session,
        # unauthenticated without a token, bad_frame for any other field (PROTOCOL.md).
        try:
            return _client_wire_to_json(w)
        except ProtocolError as e:
            if e.code != "invalid_field":
                raise
            code = "unauthenticated" if e.field == "Hello.access_token" else "bad_frame"
            raise ProtocolError(code, str(e), e.field) from e
    return _client_wire_to_json(w)


def _client_wire_to_json(w: dict) -> dict:
    k = w["kind"]
    if k == "hello":
        v = _V("Hello")
        resume = []
        seen = set()
        for r in w["resume"]:
            cid = v.id(r, "conversationId", "conversation_id", msg="ResumePosition")
            if cid in seen:
                v.bad("conversation_id", "listed twice", "ResumePosition")
            seen.add(cid)
            resume.append({"conversationId": cid,
                           "lastSeq": v.seq(r, "lastSeq", "last_seq", zero_ok=True,
                                            msg="ResumePosition")})
        out = {"kind": k, "accessToken": v.string(w, "accessToken", "access_token"),
               "protocolVersion": w["protocolVersion"], "clientName": w["clientName"],
               "clientVersion": w["clientVersion"], "resume": resume}
        if w["maxErrorCode"]:
            out["maxErrorCode"] = w["maxErrorCode"]  # absent in JSON when 0
        return out
    if k == "send":
        cmid = _uuid_or_none(w["clientMsgId"])
        v = _V("Send", cmid)
        cmid = v.id(w, "clientMsgId", "client_msg_id")
        r = w["recipient"]
        if r is None or (r["userId"] == b"" and r["groupId"] == b""):
            v.bad("recipient", "missing")
        # oneof: the last case on the wire wins; our decoder keeps both, a well-formed frame
        # has one.
        if r["userId"] != b"":
            recipient = {"userId": v.id(r, "userId", "user_id", msg="Recipient")}
        else:
            recipient = {"groupId": v.id(r, "groupId", "group_id", msg="Recipient")}
        typ = v.enum(w, "type", "type", "MessageType")
        media = None
        if w["media"] is not None:
            m = w["media"]
            media = {"mediaId": v.id(m, "mediaId", "media_id", msg="MediaRef"),
                     "contentType": m["contentType"], "sizeBytes": m["sizeBytes"]}
        return {"kind": k, "clientMsgId": cmid, "recipient": recipient, "type": typ,
                "content": w["content"], "media": media}
    if k in ("ack", "read"):
        v = _V(k.capitalize())
        return {"kind": k, "conversationId": v.id(w, "conversationId", "conversation_id"),
                "seq": v.seq(w, "seq", "seq")}
    if k == "typing":
        v = _V("ClientTyping")
        return {"kind": k, "conversationId": v.id(w, "conversationId", "conversation_id"),
                "state": v.enum(w, "state", "state", "TypingState")}
    if k == "presenceWatch":
        v = _V("PresenceWatch")
        if len(w["userIds"]) > 256:
            v.bad("user_ids", "more than 256 users")
        return {"kind": k, "userIds": [v.id({"x": u}, "x", "user_ids") for u in w["userIds"]]}
    if k == "refreshAuth":
        v = _V("RefreshAuth")
        return {"kind": k, "accessToken": v.string(w, "accessToken", "access_token")}
    if k == "ping":
        return {"kind": k, "nonce": w["nonce"]}
    raise AssertionError(k)


def server_wire_to_json(w: dict) -> dict:
    k = w["kind"]
    if k == "welcome":
        v = _V("Welcome")
        lim = w["limits"]
        if lim is None:
            v.bad("limits", "missing")
        if lim["maxFrameSize"] < 1:
            v.bad("max_frame_size", "below 1", "Limits")
        return {"kind": k, "sessionId": v.id(w, "sessionId", "session_id"),
                "userId": v.id(w, "userId", "user_id"),
                "protocolVersion": w["protocolVersion"],
                "serverTime": v.ts(w, "serverTime", "server_time"),
                "tokenExpiresAt": v.ts(w, "tokenExpiresAt", "token_expires_at"),
                "limits": dict(lim)}
    if k == "message":
        v = _V("Message")
        out = {"kind": k, "id": v.id(w, "id", "id"), "senderId": v.id(w, "senderId", "sender_id"),
               "recipientId": v.id(w, "recipientId", "recipient_id"),
               "type": v.enum(w, "type", "type", "MessageType"), "content": w["content"],
               "timestamp": v.ts(w, "timestamp", "timestamp"),
               "status": v.enum(w, "status", "status", "MessageStatus"),
               "conversationId": v.id(w, "conversationId", "conversation_id"),
               "seq": v.seq(w, "seq", "seq")}
        if w["media"] is not None:
            out["media"] = v.media_info(w["media"])  # absent in JSON for a text message
        return out
    if k == "sent":
        v = _V("Sent")
        return {"kind": k, "clientMsgId": v.id(w, "clientMsgId", "client_msg_id"),
                "messageId": v.id(w, "messageId", "message_id"),
                "conversationId": v.id(w, "conversationId", "conversation_id"),
                "seq": v.seq(w, "seq", "seq"), "timestamp": v.ts(w, "timestamp", "timestamp")}
    if k == "status":
        v = _V("Status")
        d = v.seq(w, "deliveredSeq", "delivered_seq", zero_ok=True)
        r = v.seq(w, "readSeq", "read_seq", zero_ok=True)
        if (r or 0) > (d or 0):
            v.bad("read_seq", "above delivered_seq")
        return {"kind": k, "conversationId": v.id(w, "conversationId", "conversation_id"),
                "userId": v.id(w, "userId", "user_id"), "delivered": d, "read": r}
    if k == "typing":
        v = _V("ServerTyping")
        return {"kind": k, "conversationId": v.id(w, "conversationId", "conversation_id"),
                "userId": v.id(w, "userId", "user_id"),
                "state": v.enum(w, "state", "state", "TypingState")}
    if k == "presence":
        v = _V("Presence")
        return {"kind": k, "userId": v.id(w, "userId", "user_id"), "online": w["online"],
                "lastSeen": v.ts(w, "lastSeen", "last_seen", zero_none=True)}
    if k == "error":
        v = _V("Error")
        code = w["code"]
        if code not in CODES or CODES[code][1]:
            v.bad("code", f"{code} is not a non-fatal code")
        return {"kind": k, "code": CODES[code][0], "message": w["message"],
                "clientMsgId": v.id(w, "clientMsgId", "client_msg_id", required=False)}
    if k == "closing":
        v = _V("Closing")
        code = w["code"]
        if code not in CODES or not CODES[code][1]:
            v.bad("code", f"{code} is not a fatal code")
        return {"kind": k, "code": CODES[code][0], "reason": w["reason"],
                "retryAfterMs": w["retryAfterMs"] or None,
                "supportedVersions": list(w["supportedVersions"])}
    if k == "pong":
        return {"kind": k, "nonce": w["nonce"]}
    if k == "notification":
        v = _V("Notification")
        return {"kind": k, "id": v.id(w, "id", "id"),
                "type": v.enum(w, "type", "type", "NotificationType"),
                "actorId": v.id(w, "actorId", "actor_id"),
                "actorUsername": v.string(w, "actorUsername", "actor_username"),
                "postId": v.id(w, "postId", "post_id", required=False),
                "commentId": v.id(w, "commentId", "comment_id", required=False),
                "createdAt": v.ts(w, "createdAt", "created_at"),
                "unreadCount": w["unreadCount"]}
    raise AssertionError(k)


def _id_bytes(s: Optional[str]) -> bytes:
    return b"" if s is None else uuid.UUID(s).bytes


def json_to_wire(f: dict) -> dict:
    """JSON form -> wire form (both directions). No validation: it can build bad frames on
    purpose, e.g. for the conformance steps."""
    k = f["kind"]
    w: dict[str, Any] = {"kind": k}
    enum_of = {"type": "NotificationType" if k == "notification" else "MessageType",
               "status": "MessageStatus", "state": "TypingState"}
    id_keys = {"id", "senderId", "recipientId", "conversationId", "clientMsgId", "messageId",
               "sessionId", "userId", "mediaId", "groupId", "actorId", "postId", "commentId"}
    ts_keys = {"timestamp", "serverTime", "tokenExpiresAt", "lastSeen", "createdAt"}
    for key, val in f.items():
        if key == "kind" or val is None:
            continue
        if key in id_keys:
            w[key] = _id_bytes(val) if isinstance(val, str) else val
        elif key in ts_keys:
            w[key] = parse_ts(val) if isinstance(val, str) else val
        elif key in enum_of and isinstance(val, str):
            w[key] = {n: c for c, n in ENUMS[enum_of[key]].items()}[val]
        elif key == "code" and isinstance(val, str):
            w[key] = CODE_BY_NAME[val]
        elif key == "recipient":
            w[key] = {kk: _id_bytes(vv) for kk, vv in val.items()}
        elif key == "media":
            # Send.media is a MediaRef, Message.media a MediaInfo (null / absent = 0 or "").
            w[key] = {"mediaId": _id_bytes(val["mediaId"]), "contentType": val.get("contentType", ""),
                      "sizeBytes": val.get("sizeBytes", 0)}
            if k == "message":
                w[key].update({"width": val.get("width") or 0, "height": val.get("height") or 0,
                               "durationMs": val.get("durationMs") or 0,
                               "blurhash": val.get("blurhash") or "",
                               "filename": val.get("filename") or ""})
        elif key == "resume":
            w[key] = [{"conversationId": _id_bytes(r["conversationId"]), "lastSeq": r.get("lastSeq") or 0}
                      for r in val]
        elif key == "userIds":
            w[key] = [_id_bytes(u) for u in val]
        elif key == "delivered":
            w["deliveredSeq"] = val
        elif key == "read" and k == "status":
            w["readSeq"] = val
        else:
            w[key] = val
    return w


def encode_client(frame: dict) -> bytes:
    """A ClientFrame body from its JSON form."""
    return _encode_frame(CLIENT_KIND_NUM, json_to_wire(frame))


def encode_server(frame: dict) -> bytes:
    return _encode_frame(SERVER_KIND_NUM, json_to_wire(frame))


def decode_client(body: bytes) -> dict:
    """A ClientFrame body -> JSON form, with the server's checks (bad_frame, invalid_field,
    unknown_frame_kind)."""
    if not body:
        raise ProtocolError("bad_frame", "empty frame")
    w = _decode_frame(CLIENT_KINDS, body)
    if w is None:
        raise ProtocolError("unknown_frame_kind", "no known ClientFrame case")
    return client_wire_to_json(w)


def decode_server(body: bytes) -> Optional[dict]:
    """A ServerFrame body -> JSON form; None for a frame kind this client does not know (which
    it MUST ignore). Raises ProtocolError(invalid_field) on a frame that breaks the rules."""
    if not body:
        raise ProtocolError("bad_frame", "empty frame")
    w = _decode_frame(SERVER_KINDS, body)
    if w is None:
        return None
    return server_wire_to_json(w)


# ---------------------------------------------------------------------------------------------
# Stream framing
# ---------------------------------------------------------------------------------------------

def delimit(body: bytes) -> bytes:
    return encode_varint(len(body)) + body


class StreamDecoder:
    """Varint length-delimited frames from a byte stream split anywhere."""

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE):
        self.max_frame_size = max_frame_size
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        frames = []
        while self.buf:
            length = 0
            pos = 0
            complete = False
            while pos < len(self.buf):
                b = self.buf[pos]
                if pos == 9 and b > 1:
                    raise ProtocolError("bad_frame", "length prefix overflows 64 bits")
                length |= (b & 0x7F) << (7 * pos)
                pos += 1
                if not b & 0x80:
                    complete = True
                    break
                if pos == 10:
                    raise ProtocolError("bad_frame", "length prefix longer than 10 bytes")
            if not complete:
                break  # wait for the rest of the prefix
            if length == 0:
                raise ProtocolError("bad_frame", "zero-length frame")
            if length > self.max_frame_size:
                raise ProtocolError("frame_too_large", f"declared {length} > {self.max_frame_size}")
            if len(self.buf) - pos < length:
                break
            frames.append(bytes(self.buf[pos:pos + length]))
            del self.buf[:pos + length]
        return frames

    def finish(self) -> None:
        """The stream ended: anything buffered is a truncated frame."""
        if self.buf:
            raise ProtocolError("bad_frame", "stream ended inside a frame")


# Frame kinds that may travel as datagrams.
CLIENT_DATAGRAM_KINDS = {"typing"}
CERT_WARNINGS: set[str] = set()
_LENIENT: set[tuple[str, int]] = set()
SERVER_DATAGRAM_KINDS = {"typing", "presence"}


def decode_client_datagram(body: bytes) -> dict:
    f = decode_client(body)
    if f["kind"] not in CLIENT_DATAGRAM_KINDS:
        raise ProtocolError("bad_frame", f"{f['kind']} as a datagram")
    return f


def decode_server_datagram(body: bytes) -> Optional[dict]:
    f = decode_server(body)
    if f is not None and f["kind"] not in SERVER_DATAGRAM_KINDS:
        raise ProtocolError("bad_frame", f"{f['kind']} as a datagram")
    return f


def check_websocket_message(msg) -> bytes:
    """A WebSocket message must be binary and non-empty; text is text_message_refused."""
    if isinstance(msg, str):
        raise ProtocolError("text_message_refused", "a text WebSocket message")
    if not msg:
        raise ProtocolError("bad_frame", "empty WebSocket message")
    return bytes(msg)


# ---------------------------------------------------------------------------------------------
# Transports. Each puts events on a queue: ("frame", body) for a stream frame / WebSocket
# message, ("datagram", body), ("error", ProtocolError) for bad bytes, and finally
# ("closed", CloseInfo).
# ---------------------------------------------------------------------------------------------

@dataclass
class CloseInfo:
    """How the transport ended. `kind`: websocket | quic-app | quic-transport | wt-session |
    local | eof. `code`: the WebSocket close code, QUIC error code or WebTransport session
    error code (None if none was received)."""
    kind: str
    code: Optional[int]
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.kind} close code={self.code} reason={self.reason!r}"


def ssl_context(ca: Optional[str]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
    return ctx


class Transport:
    name = "?"
    supports_datagrams = False

    def __init__(self) -> None:
        self.events: asyncio.Queue = asyncio.Queue()
        self.close_info: Optional[CloseInfo] = None

    def _closed(self, info: CloseInfo) -> None:
        if self.close_info is None:
            self.close_info = info
            self.events.put_nowait(("closed", info))

    async def send(self, body: bytes, datagram: bool = False) -> None:
        raise NotImplementedError

    async def send_raw(self, data) -> None:
        """Bytes (or, on WebSocket, a str: a text message) exactly as given: for conformance
        tests that send malformed input."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class WebSocketTransport(Transport):
    name = "websocket"

    def __init__(self, url: str, ca: Optional[str], subprotocol: Optional[str] = WS_SUBPROTOCOL):
        super().__init__()
        self.url = url
        self.ca = ca
        self.subprotocol = subprotocol
        self.ws = None
        self._reader: Optional[asyncio.Task] = None
        self._closing_locally = False
        self.close_echoed: Optional[bool] = None

    async def open(self, timeout: float = 10) -> "WebSocketTransport":
        from websockets.asyncio.client import connect
        kwargs: dict[str, Any] = dict(ssl=ssl_context(self.ca), max_size=DEFAULT_MAX_FRAME_SIZE,
                                      open_timeout=timeout, ping_interval=None)
        if self.subprotocol:
            kwargs["subprotocols"] = [self.subprotocol]
        self.ws = await connect(self.url, **kwargs)
        if self.subprotocol and self.ws.subprotocol != self.subprotocol:
            raise RuntimeError(f"server chose subprotocol {self.ws.subprotocol!r}")
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed
        try:
            async for msg in self.ws:
                try:
                    self.events.put_nowait(("frame", check_websocket_message(msg)))
                except ProtocolError as e:
                    self.events.put_nowait(("error", e))
        except ConnectionClosed:
            pass
        rcvd = self.ws.protocol.close_rcvd
        if self._closing_locally:
            # We closed (1000); RFC 6455 5.5.1: the server answers with a Close frame.
            self.close_echoed = rcvd is not None
            self._closed(CloseInfo("local", 1000, "closed by client; server "
                                   + (f"answered {rcvd.code}" if rcvd else "sent no Close frame")))
        elif rcvd is not None:
            self._closed(CloseInfo("websocket", rcvd.code, rcvd.reason))
        else:
            self._closed(CloseInfo("eof", None, "connection closed without a close frame"))

    async def send(self, body: bytes, datagram: bool = False) -> None:
        await self.ws.send(body)

    async def send_raw(self, data) -> None:
        await self.ws.send(data)

    async def close(self) -> None:
        if self.ws is not None:
            self._closing_locally = self.close_info is None
            await self.ws.close(1000)
        if self._reader is not None:
            await asyncio.wait([self._reader], timeout=5)


# WebTransport over HTTP/3 (draft-02, what Chromium and h3-webtransport speak).
CLOSE_WEBTRANSPORT_SESSION = 0x2843
DRAIN_WEBTRANSPORT_SESSION = 0x78AE


def encode_capsule(ctype: int, value: bytes) -> bytes:
    from aioquic.buffer import encode_uint_var
    return encode_uint_var(ctype) + encode_uint_var(len(value)) + value


def parse_capsules(buf: bytearray) -> list[tuple[int, bytes]]:
    """Complete capsules (QUIC varint type, length, value) from the front of buf; consumes them."""
    from aioquic.buffer import Buffer, BufferReadError
    out = []
    while buf:
        b = Buffer(data=bytes(buf))
        try:
            ctype = b.pull_uint_var()
            ln = b.pull_uint_var()
            if b.capacity - b.tell() < ln:
                break
            value = b.pull_bytes(ln)
        except BufferReadError:
            break
        out.append((ctype, value))
        del buf[:b.tell()]
    return out


class _QuicBase(Transport):
    """Shared by native QUIC and WebTransport: one client bidi stream of varint-delimited
    frames, datagrams for ephemeral frames."""
    supports_datagrams = True

    def __init__(self, host: str, port: int, ca: Optional[str], alpn: list[str]):
        super().__init__()
        self.host, self.port, self.ca, self.alpn = host, port, ca, alpn
        self.protocol = None
        self._cm = None
        self.stream_id: Optional[int] = None
        self.decoder = StreamDecoder()
        self._stream_broken = False
        self._terminated_reason: Optional[str] = None
        self._opening = False

    def _configuration(self, lenient: bool):
        from aioquic.quic.configuration import QuicConfiguration
        cfg = QuicConfiguration(is_client=True, alpn_protocols=self.alpn,
                                max_datagram_frame_size=65536, server_name=self.host,
                                idle_timeout=60.0)
        if lenient:
            cfg.verify_mode = ssl.CERT_NONE  # verified by _verify_openssl before any data
        elif self.ca:
            cfg.load_verify_locations(self.ca)
        return cfg

    async def _connect(self, timeout: float) -> None:
        if (self.host, self.port) in _LENIENT:
            await self._connect_once(timeout, lenient=True)
            self._verify_openssl()
            return
        try:
            import logging
            quiet = logging.getLogger("quic")
            level = quiet.level
            quiet.setLevel(logging.CRITICAL)  # the strict attempt may log the refusal
            try:
                await self._connect_once(timeout, lenient=False)
            finally:
                quiet.setLevel(level)
        except ConnectionError as e:
            # aioquic verifies with Python's `cryptography`, which refuses certificates that
            # break DER (e.g. an explicitly encoded BasicConstraints cA=FALSE). Verify the same
            # chain with OpenSSL instead, and say so.
            if "could not be parsed" not in str(self._terminated_reason or e):
                raise
            CERT_WARNINGS.add(f"{self.host}:{self.port}: the server certificate is refused by "
                              f"strict DER parsing ({self._terminated_reason}); verified with "
                              f"OpenSSL instead")
            self._terminated_reason = None
            _LENIENT.add((self.host, self.port))
            await self._connect_once(timeout, lenient=True)
            self._verify_openssl()

    async def _connect_once(self, timeout: float, lenient: bool) -> None:
        from aioquic.asyncio.client import connect
        from aioquic.asyncio.protocol import QuicConnectionProtocol

        outer = self

        class Proto(QuicConnectionProtocol):
            def __init__(self, *a, **kw) -> None:
                super().__init__(*a, **kw)
                outer._on_protocol(self)

            def quic_event_received(self, event) -> None:
                outer._quic_event(event)

        self._opening = True
        self._cm = connect(self.host, self.port, configuration=self._configuration(lenient),
                           create_protocol=Proto)
        try:
            self.protocol = await asyncio.wait_for(self._cm.__aenter__(), timeout)
        except ConnectionError as e:
            raise ConnectionError(self._terminated_reason or str(e)) from None
        await asyncio.sleep(0)  # let a close that raced the handshake arrive
        self._opening = False
        if self._terminated_reason is not None:
            raise ConnectionError(self._terminated_reason)

    def _on_protocol(self, protocol) -> None:
        self.protocol = protocol

    def _verify_openssl(self) -> None:
        """Chain to our CA and name check, with OpenSSL, before anything is sent."""
        from cryptography.hazmat.primitives.serialization import Encoding
        from OpenSSL import crypto
        tls = self.protocol._quic.tls
        leaf = crypto.load_certificate(crypto.FILETYPE_ASN1,
                                       tls._peer_certificate.public_bytes(Encoding.DER))
        store = crypto.X509Store()
        with open(self.ca, "rb") as f:
            store.add_cert(crypto.load_certificate(crypto.FILETYPE_PEM, f.read()))
        chain = [crypto.load_certificate(crypto.FILETYPE_ASN1, c.public_bytes(Encoding.DER))
                 for c in tls._peer_certificate_chain]
        try:
            crypto.X509StoreContext(store, leaf, chain).verify_certificate()
        except crypto.X509StoreContextError as e:
            self.protocol.close(error_code=0x100 + 42)
            raise ssl.SSLCertVerificationError(f"server certificate: {e}")
        import tempfile
        with tempfile.NamedTemporaryFile("wb", suffix=".pem") as tmp:
            tmp.write(crypto.dump_certificate(crypto.FILETYPE_PEM, leaf))
            tmp.flush()
            decoded = ssl._ssl._test_decode_cert(tmp.name)  # OpenSSL's parse of the SAN
        names = [v for k, v in decoded.get("subjectAltName", ()) if k in ("DNS", "IP Address")]
        if self.host not in names:
            self.protocol.close(error_code=0x100 + 42)
            raise ssl.SSLCertVerificationError(f"server certificate names {names}, not {self.host}")

    def _stream_data(self, data: bytes, ended: bool) -> None:
        if self._stream_broken:
            return
        try:
            for body in self.decoder.feed(data):
                self.events.put_nowait(("frame", body))
            if ended:
                self.decoder.finish()
                self._ended_stream()
        except ProtocolError as e:
            self._stream_broken = True
            self.events.put_nowait(("error", e))

    def _ended_stream(self) -> None:
        pass

    def _terminated(self, ev) -> None:
        self._terminated_reason = ev.reason_phrase or f"code {ev.error_code}"
        if self._opening:
            return
        kind = "quic-transport" if ev.frame_type is not None else "quic-app"
        self._closed(CloseInfo(kind, ev.error_code, ev.reason_phrase))

    def _transmit(self) -> None:
        self.protocol.transmit()

    async def send(self, body: bytes, datagram: bool = False) -> None:
        if datagram:
            self._send_datagram(body)
        else:
            self.protocol._quic.send_stream_data(self.stream_id, delimit(body))
        self._transmit()

    async def send_raw(self, data: bytes) -> None:
        self.protocol._quic.send_stream_data(self.stream_id, bytes(data))
        self._transmit()

    def _send_datagram(self, body: bytes) -> None:
        raise NotImplementedError

    async def _shutdown(self, code: int = 0) -> None:
        if self.protocol is not None:
            self.protocol.close(error_code=code)
            try:
                await asyncio.wait_for(self.protocol.wait_closed(), 5)
            except asyncio.TimeoutError:
                pass
        self._closed(CloseInfo("local", code, "closed by client"))


class QuicTransport(_QuicBase):
    """Native QUIC, ALPN haberci/1."""
    name = "quic"

    def __init__(self, host: str, port: int, ca: Optional[str]):
        super().__init__(host, port, ca, [QUIC_ALPN])

    async def open(self, timeout: float = 10) -> "QuicTransport":
        await self._connect(timeout)
        self.stream_id = self.protocol._quic.get_next_available_stream_id()
        return self

    def _quic_event(self, ev) -> None:
        from aioquic.quic import events as qe
        if isinstance(ev, qe.StreamDataReceived) and ev.stream_id == self.stream_id:
            self._stream_data(ev.data, ev.end_stream)
        elif isinstance(ev, qe.StreamReset) and ev.stream_id == self.stream_id:
            self.events.put_nowait(("reset", ev.error_code))
        elif isinstance(ev, qe.DatagramFrameReceived):
            self.events.put_nowait(("datagram", ev.data))
        elif isinstance(ev, qe.ConnectionTerminated):
            self._terminated(ev)

    def _send_datagram(self, body: bytes) -> None:
        self.protocol._quic.send_datagram_frame(body)

    async def close(self) -> None:
        await self._shutdown(0)


class WebTransportError(Exception):
    pass


class WebTransportTransport(_QuicBase):
    """WebTransport over HTTP/3: extended CONNECT on `path`, one client bidi stream."""
    name = "webtransport"

    def __init__(self, host: str, port: int, ca: Optional[str], path: str = "/v1/rt",
                 origin: Optional[str] = None):
        super().__init__(host, port, ca, ["h3"])
        self.path = path
        self.origin = origin
        self.h3 = None
        self.session_id: Optional[int] = None
        self._response: Optional[asyncio.Future] = None
        self._settings: Optional[asyncio.Future] = None
        self._capsules = bytearray()
        self.response_headers: dict[str, str] = {}
        self._pending_close: Optional[CloseInfo] = None

    async def open(self, timeout: float = 10) -> "WebTransportTransport":
        from aioquic.h3.connection import H3Connection
        loop = asyncio.get_running_loop()
        self._response = loop.create_future()
        self._settings = loop.create_future()
        for fut in (self._response, self._settings):
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        await self._connect(timeout)
        # The server's SETTINGS must allow WebTransport before we CONNECT.
        try:
            settings = await asyncio.wait_for(self._settings, timeout)
        except asyncio.TimeoutError:
            raise WebTransportError("no HTTP/3 SETTINGS from the server")
        from aioquic.h3.connection import Setting
        if not settings.get(Setting.ENABLE_WEBTRANSPORT) and not settings.get(0xC671706A):
            raise WebTransportError(f"WebTransport is not served on {self.host}:{self.port}: the "
                                    f"server's HTTP/3 SETTINGS do not enable it ({settings})")
        self.session_id = self.protocol._quic.get_next_available_stream_id()
        authority = f"{self.host}:{self.port}"
        headers = [(b":method", b"CONNECT"), (b":protocol", b"webtransport"),
                   (b":scheme", b"https"), (b":authority", authority.encode()),
                   (b":path", self.path.encode()),
                   (b"sec-webtransport-http3-draft02", b"1")]
        if self.origin:
            headers.append((b"origin", self.origin.encode()))
        self.h3.send_headers(self.session_id, headers, end_stream=False)
        self._transmit()
        try:
            await asyncio.wait_for(self._response, timeout)
        except asyncio.TimeoutError:
            raise WebTransportError(f"no response to CONNECT {self.path}")
        status = self.response_headers.get(":status")
        if status != "200":
            raise WebTransportError(f"CONNECT {self.path} answered :status {status} "
                                    f"{self.response_headers}")
        self.stream_id = self.h3.create_webtransport_stream(self.session_id)
        self._transmit()
        return self

    def _quic_event(self, ev) -> None:
        from aioquic.h3 import events as he
        from aioquic.quic import events as qe
        # Our WebTransport stream bypasses the H3 layer: after its header (sent by
        # create_webtransport_stream) it carries raw protocol bytes both ways.
        if isinstance(ev, qe.StreamDataReceived) and ev.stream_id == self.stream_id:
            self._stream_data(ev.data, ev.end_stream)
            return
        if isinstance(ev, qe.StreamReset) and ev.stream_id == self.stream_id:
            if self._pending_close is None:
                self.events.put_nowait(("reset", ev.error_code))
            self._flush_close()
            return
        if isinstance(ev, qe.ConnectionTerminated):
            self._terminated(ev)
            if self._opening:
                return
            if self._response and not self._response.done():
                self._response.set_exception(WebTransportError(f"connection closed: {ev}"))
            if self._settings and not self._settings.done():
                self._settings.set_exception(WebTransportError(f"connection closed: {ev}"))
        if self.h3 is None:
            return
        for h in self.h3.handle_event(ev):
            if isinstance(h, he.HeadersReceived) and h.stream_id == self.session_id:
                self.response_headers = {k.decode(): v.decode() for k, v in h.headers}
                if not self._response.done():
                    self._response.set_result(True)
                if h.stream_ended:
                    self._closed(CloseInfo("wt-session", None, "CONNECT stream ended"))
            elif isinstance(h, he.DataReceived) and h.stream_id == self.session_id:
                self._capsules += h.data
                for ctype, value in parse_capsules(self._capsules):
                    if ctype == CLOSE_WEBTRANSPORT_SESSION and len(value) >= 4:
                        self._session_closed(CloseInfo(
                            "wt-session", int.from_bytes(value[:4], "big"),
                            value[4:].decode("utf-8", "replace")))
                if h.stream_ended:
                    self._session_closed(CloseInfo("wt-session", None, "CONNECT stream ended"))
            elif isinstance(h, he.DatagramReceived) and h.stream_id == self.session_id:
                self.events.put_nowait(("datagram", h.data))
        if self._settings is not None and not self._settings.done():
            s = self.h3.received_settings
            if s is not None:
                self._settings.set_result(dict(s))

    def _session_closed(self, info: CloseInfo) -> None:
        """The session is closed, but the Closing frame on our stream (another QUIC stream)
        may still be on its way: report the close once that stream ends, the connection
        closes, or after a short bound."""
        if self._pending_close is None:
            self._pending_close = info
            asyncio.get_running_loop().call_later(2.0, self._flush_close)

    def _flush_close(self) -> None:
        if self._pending_close is not None:
            self._closed(self._pending_close)

    def _ended_stream(self) -> None:
        self._flush_close()

    def _terminated(self, ev) -> None:
        if self._pending_close is not None and not self._opening:
            self._flush_close()
            return
        super()._terminated(ev)

    def _on_protocol(self, protocol) -> None:
        from aioquic.h3.connection import H3Connection
        self.protocol = protocol
        self.h3 = H3Connection(protocol._quic, enable_webtransport=True)

    def _send_datagram(self, body: bytes) -> None:
        self.h3.send_datagram(self.session_id, body)

    async def close(self) -> None:
        if self.h3 is not None and self.session_id is not None and self.close_info is None:
            try:
                self.h3.send_data(self.session_id,
                                  encode_capsule(CLOSE_WEBTRANSPORT_SESSION, bytes(4)), True)
                self._transmit()
            except Exception:
                pass
        await self._shutdown(0)


async def open_transport(kind: str, ca: Optional[str], host: str = "localhost",
                         tcp_port: int = 8443, udp_port: int = 4433,
                         timeout: float = 10) -> Transport:
    if kind == "websocket":
        return await WebSocketTransport(f"wss://{host}:{tcp_port}/v1/ws", ca).open(timeout)
    if kind == "webtransport":
        return await WebTransportTransport(host, udp_port, ca).open(timeout)
    if kind == "quic":
        return await QuicTransport(host, udp_port, ca).open(timeout)
    raise ValueError(f"unknown transport {kind}")


# ---------------------------------------------------------------------------------------------
# Session
# ---------------------------------------------------------------------------------------------

class Closed(Exception):
    """The session ended: `closing` is the Closing frame (JSON form) if one arrived."""

    def __init__(self, closing: Optional[dict], info: Optional[CloseInfo], what: str = ""):
        super().__init__(f"{what + ': ' if what else ''}session closed: closing={closing} {info}")
        self.closing = closing
        self.info = info


class Timeout(Exception):
    pass


def matches(frame: dict, pattern: dict) -> bool:
    """Subset match: every key of pattern equals the frame's (recursively for dicts)."""
    for k, want in pattern.items():
        got = frame.get(k)
        if isinstance(want, dict) and isinstance(got, dict):
            if not matches(got, want):
                return False
        elif got != want:
            return False
    return True


class Session:
    """One connection. Received frames (JSON form) collect in `inbox` until a `wait_for` takes
    them; every Message is also logged in `messages` in arrival order, with per-conversation
    order checks (`anomalies`)."""

    def __init__(self, transport: Transport, name: str = "client", log: Callable = None):
        self.t = transport
        self.name = name
        self.log = log or (lambda *a: None)
        self.inbox: list[dict] = []
        self.messages: list[dict] = []
        self.last_seq: dict[str, int] = {}
        self.anomalies: list[str] = []  # gaps, bad frames: what a correct server never sends
        self.duplicates: list[str] = []  # Messages at or below the last seq (dropped)
        self.welcome: Optional[dict] = None
        self.closing: Optional[dict] = None
        self.close_info: Optional[CloseInfo] = None
        self.cond = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())
        self._heartbeat: Optional[asyncio.Task] = None
        self._last_sent = asyncio.get_running_loop().time()
        self._nonce = random.randrange(1 << 16)

    # -- receiving --------------------------------------------------------------------------
    async def _read(self) -> None:
        while True:
            ev, val = await self.t.events.get()
            if ev in ("frame", "datagram"):
                try:
                    f = decode_server_datagram(val) if ev == "datagram" else decode_server(val)
                except ProtocolError as e:
                    self.anomalies.append(f"server sent a bad frame ({e}): {val.hex()}")
                    continue
                if f is None:
                    continue  # a frame kind from a newer server: ignored
                if ev == "datagram":
                    f["datagram"] = True
                self._on_frame(f)
            elif ev == "error":
                self.anomalies.append(f"server bytes refused by the framing: {val}")
            elif ev == "reset":
                self.anomalies.append(f"server reset the stream with code {val}")
            elif ev == "closed":
                self.close_info = val
                self.log(f"{self.name}: transport closed: {val}")
                async with self.cond:
                    self.cond.notify_all()
                return
            async with self.cond:
                self.cond.notify_all()

    def _on_frame(self, f: dict) -> None:
        self.log(f"{self.name} <- {_short(f)}")
        k = f["kind"]
        if k == "closing":
            self.closing = f
        elif k == "message":
            self.messages.append(f)
            conv, seq = f["conversationId"], f["seq"]
            last = self.last_seq.get(conv)
            if last is not None:
                if seq <= last:  # "harmless duplicate": dropped, counted
                    self.duplicates.append(f"duplicate Message seq {seq} (last {last}) in {conv}")
                    return
                if seq != last + 1:
                    self.anomalies.append(f"gap: Message seq {seq} after {last} in {conv}")
            self.last_seq[conv] = max(seq, last or 0)
        self.inbox.append(f)

    async def wait_for(self, pattern: dict | Callable[[dict], bool], timeout: float = 10,
                       what: str = "") -> dict:
        """Take the first received frame matching `pattern` (a subset dict, or a predicate);
        wait for it up to `timeout` seconds. Raises Closed or Timeout."""
        pred = pattern if callable(pattern) else (lambda f: matches(f, pattern))
        what = what or str(pattern)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self.cond:
            while True:
                for i, f in enumerate(self.inbox):
                    if pred(f):
                        del self.inbox[i]
                        return f
                if self.close_info is not None:
                    raise Closed(self.closing, self.close_info, f"{self.name} waiting for {what}")
                left = deadline - loop.time()
                if left <= 0:
                    raise Timeout(f"{self.name}: no {what} within {timeout}s; unclaimed frames: "
                                  f"{[_short(x) for x in self.inbox]}")
                try:
                    await asyncio.wait_for(self.cond.wait(), left)
                except asyncio.TimeoutError:
                    pass

    async def wait_closed(self, timeout: float = 10) -> tuple[Optional[dict], CloseInfo]:
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        except asyncio.TimeoutError:
            raise Timeout(f"{self.name}: transport still open after {timeout}s")
        return self.closing, self.close_info

    # -- sending ----------------------------------------------------------------------------
    async def send_frame(self, frame: dict, datagram: bool = False, check: bool = True) -> None:
        body = encode_client(frame)
        if check:  # never send what the spec says a server must refuse
            (decode_client_datagram if datagram else decode_client)(body)
        self.log(f"{self.name} -> {_short(frame)}{' (datagram)' if datagram else ''}")
        await self.t.send(body, datagram)
        self._last_sent = asyncio.get_running_loop().time()

    async def hello(self, token: str, resume: list[dict] = (), version: int = PROTOCOL_VERSION,
                    timeout: float = 10, heartbeat: bool = True) -> dict:
        await self.send_frame({"kind": "hello", "accessToken": token, "protocolVersion": version,
                               "clientName": "haberci-py", "clientVersion": "0.1.0",
                               "resume": list(resume), "maxErrorCode": MAX_ERROR_CODE},
                              check=bool(token))
        for r in resume:
            if r.get("lastSeq"):
                self.last_seq[r["conversationId"]] = r["lastSeq"]
        f = await self.wait_for(lambda f: f["kind"] in ("welcome", "closing"), timeout,
                                "Welcome or Closing")
        if f["kind"] == "closing":
            raise Closed(f, None, f"{self.name} hello")
        self.welcome = f
        idle = f["limits"]["idleTimeoutMs"]
        if heartbeat and idle:
            self._heartbeat = asyncio.create_task(self._beat(idle / 1000 / 3))
        return f

    async def _beat(self, every: float) -> None:
        loop = asyncio.get_running_loop()
        while self.close_info is None:
            await asyncio.sleep(max(0.1, self._last_sent + every - loop.time()))
            if loop.time() - self._last_sent >= every and self.close_info is None:
                try:
                    await self.send_frame({"kind": "ping", "nonce": self._next_nonce()})
                except Exception:
                    return

    def _next_nonce(self) -> int:
        self._nonce = (self._nonce + 1) & 0xFFFFFFFF
        return self._nonce

    async def ping(self, timeout: float = 10) -> dict:
        nonce = self._next_nonce()
        await self.send_frame({"kind": "ping", "nonce": nonce})
        return await self.wait_for({"kind": "pong", "nonce": nonce}, timeout, f"Pong {nonce}")

    async def send_message(self, content: str, to_user: Optional[str] = None,
                           group: Optional[str] = None, client_msg_id: Optional[str] = None,
                           type: str = "text", timeout: float = 10) -> dict:
        """Send, then wait for the Sent (or Error) naming our client_msg_id."""
        cmid = client_msg_id or str(uuid.uuid4())
        recipient = {"userId": to_user} if to_user else {"groupId": group}
        await self.send_frame({"kind": "send", "clientMsgId": cmid, "recipient": recipient,
                               "type": type, "content": content})
        return await self.wait_for(
            lambda f: f["kind"] in ("sent", "error") and f.get("clientMsgId") == cmid,
            timeout, f"Sent for {cmid}")

    async def ack(self, conversation_id: str, seq: int) -> None:
        await self.send_frame({"kind": "ack", "conversationId": conversation_id, "seq": seq})

    async def read(self, conversation_id: str, seq: int) -> None:
        await self.send_frame({"kind": "read", "conversationId": conversation_id, "seq": seq})

    async def close(self) -> None:
        if self._heartbeat:
            self._heartbeat.cancel()
        if self.close_info is None:
            await self.t.close()
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), 5)
        except asyncio.TimeoutError:
            self._reader.cancel()


def _short(f: dict) -> str:
    s = json.dumps({k: v for k, v in f.items()}, ensure_ascii=False)
    return s if len(s) < 300 else s[:297] + "..."


async def connect(kind: str, token: str, ca: Optional[str], name: str = "client",
                  resume: list[dict] = (), log: Callable = None, **ports) -> Session:
    t = await open_transport(kind, ca, **ports)
    s = Session(t, name, log)
    try:
        await s.hello(token, resume)
    except BaseException:
        await s.close()
        raise
    return s


# ---------------------------------------------------------------------------------------------
# --stdio-peer: the external-peer protocol of interop.py, served by this client
# ---------------------------------------------------------------------------------------------

async def stdio_peer() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    session: Optional[Session] = None

    def out(obj: dict) -> None:
        sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def closed(rep: dict, s: Optional[Session], e: Exception) -> dict:
        info = getattr(e, "info", None) or (s.close_info if s else None)
        closing = getattr(e, "closing", None) or (s.closing if s else None)
        rep.update(ok=False, error=str(e), closing=closing,
                   close=None if info is None else {"kind": info.kind, "code": info.code,
                                                    "reason": info.reason})
        return rep

    while True:
        line = await reader.readline()
        if not line:
            break
        req = json.loads(line)
        rep: dict[str, Any] = {"id": req.get("id"), "ok": True}
        op = req.get("op")
        try:
            if op == "connect":
                if session is not None:
                    await session.close()
                    session = None
                t = await open_transport(req["transport"], req.get("ca"),
                                         host=req.get("host", "localhost"),
                                         tcp_port=req.get("tcpPort", 8443),
                                         udp_port=req.get("udpPort", 4433))
                s = Session(t, "stdio-peer")
                try:
                    rep["frame"] = await s.hello(req["token"], req.get("resume", []))
                    session = s
                except Closed as e:
                    try:
                        await s.wait_closed(10)
                    except Timeout:
                        pass
                    await s.close()
                    closed(rep, s, e)
            elif op == "send":
                await session.send_frame(req["frame"])
            elif op == "expect":
                pats = req["match"] if isinstance(req["match"], list) else [req["match"]]
                try:
                    rep["frame"] = await session.wait_for(
                        lambda f: any(matches(f, p) for p in pats),
                        req.get("timeoutMs", 10000) / 1000, str(pats))
                except Closed as e:
                    closed(rep, session, e)
                except Timeout as e:
                    rep.update(ok=False, error=f"timeout: {e}")
            elif op == "close":
                if session is not None:
                    await session.close()
                    rep["anomalies"] = session.anomalies
                    rep["duplicates"] = session.duplicates
                    session = None
                else:
                    rep["anomalies"] = []
            else:
                rep.update(ok=False, error=f"unknown op {op!r}")
        except Exception as e:  # report, keep serving
            rep.update(ok=False, error=f"{type(e).__name__}: {e}")
        out(rep)
    if session is not None:
        await session.close()


def main(argv: list[str]) -> int:
    if argv[:1] == ["--stdio-peer"]:
        asyncio.run(stdio_peer())
        return 0
    if argv[:1] == ["--self-test"]:
        from pathlib import Path
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import test_vectors
        d = Path(argv[1]) if len(argv) > 1 else test_vectors.DEFAULT_DIR
        return test_vectors.run(d)
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
