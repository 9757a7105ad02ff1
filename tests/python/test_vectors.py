"""Checks haberci_client's codec against every golden vector in wire/tests/vectors/.

    python tests/python/test_vectors.py [VECTORS_DIR]     (or: python -m unittest test_vectors)

Valid vectors: the .bin decodes (whole, and fed one byte at a time) to the .json frame, and
the .json frame encodes back to the exact .bin bytes. Malformed vectors: the receiver raises
the .json's error code (and field / clientMsgId for invalid_field), fatal as the table says.
"""

from __future__ import annotations

import json
import os
import sys
import unittest
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import haberci_client as hc  # noqa: E402

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "wire" / "tests" / "vectors"


def _decode_stream(data: bytes, direction: str, max_frame_size: int, chunk: int) -> list:
    dec = hc.StreamDecoder(max_frame_size)
    bodies = []
    for i in range(0, len(data), chunk):
        bodies += dec.feed(data[i:i + chunk])
    dec.finish()
    decode = hc.decode_client if direction == "client" else hc.decode_server
    return [decode(b) for b in bodies]


def receive(data: bytes, vector: dict, chunk: int) -> list:
    """What a receiver of this vector's direction does with these bytes on its transport."""
    direction, transport = vector["direction"], vector["transport"]
    if transport == "stream":
        return _decode_stream(data, direction, vector["maxFrameSize"], chunk)
    if transport == "datagram":
        dg = hc.decode_client_datagram if direction == "client" else hc.decode_server_datagram
        return [dg(data)]
    if transport == "websocket-text":
        hc.check_websocket_message(data.decode("utf-8"))
        return []
    if transport == "websocket":
        hc.check_websocket_message(data)
        decode = hc.decode_client if direction == "client" else hc.decode_server
        return [decode(data)]
    raise AssertionError(f"unknown transport {transport}")


def check_vector(path: Path) -> list[str]:
    """Returns a list of failure messages for one .json/.bin pair (empty = pass)."""
    v = json.loads(path.read_text())
    data = path.with_suffix(".bin").read_bytes()
    name = path.stem
    fails = []
    if data.hex() != v["hex"]:
        fails.append(f"{name}: .bin differs from the .json hex")
    if "frame" in v:
        for chunk in (len(data) or 1, 1):
            try:
                got = receive(data, v, chunk)
            except hc.ProtocolError as e:
                fails.append(f"{name}: decode (chunk {chunk}) raised {e}")
                continue
            if got != [v["frame"]]:
                fails.append(f"{name}: decoded (chunk {chunk}) to {got}, expected {v['frame']}")
        enc = hc.encode_client if v["direction"] == "client" else hc.encode_server
        body = enc(v["frame"])
        wire = hc.delimit(body) if v["transport"] == "stream" else body
        if wire != data:
            fails.append(f"{name}: encoded to {wire.hex()}, expected {data.hex()}")
        # The WebSocket form of a valid stream vector is the body without its prefix.
        if v["transport"] == "stream":
            ws = dict(v, transport="websocket")
            try:
                if receive(body, ws, 1) != [v["frame"]]:
                    fails.append(f"{name}: WebSocket form decodes differently")
            except hc.ProtocolError as e:
                fails.append(f"{name}: WebSocket form raised {e}")
    else:
        want = v["error"]
        for chunk in (len(data) or 1, 1):
            try:
                got = receive(data, v, chunk)
            except hc.ProtocolError as e:
                if e.code != want["code"]:
                    fails.append(f"{name}: raised {e.code} ({e}), expected {want['code']}")
                if e.protocol_code != want["protocolCode"] or e.fatal != want["fatal"]:
                    fails.append(f"{name}: code {e.protocol_code} fatal {e.fatal}, expected "
                                 f"{want['protocolCode']} fatal {want['fatal']}")
                if "field" in want and e.field != want["field"]:
                    fails.append(f"{name}: field {e.field}, expected {want['field']}")
                if e.client_msg_id != want.get("clientMsgId"):
                    fails.append(f"{name}: clientMsgId {e.client_msg_id}, expected "
                                 f"{want.get('clientMsgId')}")
            else:
                fails.append(f"{name}: accepted (chunk {chunk}) as {got}, expected {want['code']}")
    return fails


def run(directory: Path) -> int:
    paths = sorted(directory.glob("*.json"))
    if not paths:
        print(f"no vectors in {directory}", file=sys.stderr)
        return 1
    failures = []
    for p in paths:
        failures += check_vector(p)
    for f in failures:
        print("FAIL", f, file=sys.stderr)
    print(f"vectors: {len(paths) - len({f.split(':')[0] for f in failures})}/{len(paths)} pass")
    return 1 if failures else 0


class VectorTest(unittest.TestCase):
    def test_every_vector(self):
        paths = sorted(DEFAULT_DIR.glob("*.json"))
        self.assertTrue(paths, f"no vectors in {DEFAULT_DIR}")
        for p in paths:
            with self.subTest(vector=p.stem):
                self.assertEqual(check_vector(p), [])

    def test_stream_split_anywhere(self):
        # Several frames back to back, fed at every split point.
        names = ["server_welcome", "server_message", "server_sent", "server_pong"]
        data = b"".join((DEFAULT_DIR / f"{n}.bin").read_bytes() for n in names)
        for cut in range(len(data) + 1):
            dec = hc.StreamDecoder()
            bodies = dec.feed(data[:cut]) + dec.feed(data[cut:])
            dec.finish()
            self.assertEqual([hc.decode_server(b)["kind"] for b in bodies],
                             ["welcome", "message", "sent", "pong"])

    def test_unknown_server_frame_kind_is_ignored(self):
        self.assertIsNone(hc.decode_server(bytes.fromhex("980601")))

    def test_blocked_is_code_18_and_hello_says_so(self):
        self.assertEqual(hc.CODE_BY_NAME["blocked"], 18)
        self.assertEqual(hc.CODES[18], ("blocked", False))
        self.assertEqual(hc.MAX_ERROR_CODE, max(hc.CODES))
        hello = {"kind": "hello", "accessToken": "t", "protocolVersion": 1, "clientName": "",
                 "clientVersion": "", "resume": [], "maxErrorCode": hc.MAX_ERROR_CODE}
        self.assertEqual(hc.decode_client(hc.encode_client(hello)), hello)
        # An Error{blocked} decodes; a notification frame is delivered, not ignored.
        err = {"kind": "error", "code": "blocked", "message": "", "clientMsgId": None}
        self.assertEqual(hc.decode_server(hc.encode_server(err)), err)

    def test_media_refused_is_code_19_too_many_sessions_20_and_hello_says_so(self):
        self.assertEqual(hc.CODE_BY_NAME["media_refused"], 19)
        self.assertEqual(hc.CODES[19], ("media_refused", False))
        self.assertEqual(hc.CODE_BY_NAME["too_many_sessions"], 20)
        self.assertEqual(hc.CODES[20], ("too_many_sessions", True))
        self.assertEqual(hc.MAX_ERROR_CODE, 20)

    def _media_message(self, **media) -> dict:
        frame = json.loads((DEFAULT_DIR / "server_message_media.json").read_text())["frame"]
        frame["media"].update(media)
        return frame

    def test_media_strings_are_held_to_their_limits(self):
        # At the limits: 255 bytes, 100 two-byte characters (the blurhash counts
        # characters), 255 bytes.
        at_limits = self._media_message(contentType="x" * 255, blurhash="ü" * 100,
                                        filename="y" * 255)
        self.assertEqual(hc.decode_server(hc.encode_server(at_limits)), at_limits)
        for key, value, field in [("contentType", "x" * 256, "MediaInfo.content_type"),
                                  ("blurhash", "L" * 101, "MediaInfo.blurhash"),
                                  ("filename", "ü" * 128, "MediaInfo.filename"),
                                  ("mediaId", "00000000-0000-0000-0000-000000000000",
                                   "MediaInfo.media_id")]:
            with self.subTest(key=key):
                body = hc.encode_server(self._media_message(**{key: value}))
                with self.assertRaises(hc.ProtocolError) as caught:
                    hc.decode_server(body)
                self.assertEqual((caught.exception.code, caught.exception.field),
                                 ("invalid_field", field))

    def test_media_unknown_values_are_null_and_text_has_no_media(self):
        unknown = self._media_message(contentType="", sizeBytes=0, width=None, height=None,
                                      durationMs=None, blurhash=None, filename=None)
        self.assertEqual(hc.decode_server(hc.encode_server(unknown)), unknown)
        text = json.loads((DEFAULT_DIR / "server_message.json").read_text())["frame"]
        self.assertNotIn("media", hc.decode_server(hc.encode_server(text)))

    def test_capsule_roundtrip(self):
        cap = hc.encode_capsule(hc.CLOSE_WEBTRANSPORT_SESSION, (4006).to_bytes(4, "big") + b"x")
        self.assertEqual(hc.parse_capsules(bytearray(cap)),
                         [(hc.CLOSE_WEBTRANSPORT_SESSION, (4006).to_bytes(4, "big") + b"x")])


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR))
