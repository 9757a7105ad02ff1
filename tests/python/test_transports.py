"""The QUIC and WebTransport code paths of haberci_client against a tiny in-process server
(aioquic), so they are tested even where the gateway does not serve them.

    python -m unittest tests/python/test_transports.py     (needs aioquic)

The fake server speaks just enough of the protocol: Hello -> Welcome (or Closing
unauthenticated for the token "bad", closing the session with that code), Ping -> Pong, a
typing datagram echoed as a server typing datagram. Its certificate comes from a CA made
here, so the strict certificate path is what gets exercised.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import sys
import tempfile
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import haberci_client as hc  # noqa: E402

USER = "01920000-0000-7000-8000-00000000a11c"
CONV = "01920000-0000-7000-8000-00000000c0de"


def make_certs(directory: str) -> tuple[str, str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("test CA")).issuer_name(name("test CA"))
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(name("localhost")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = [os.path.join(directory, n) for n in ("ca.pem", "leaf.pem", "leaf-key.pem")]
    with open(paths[0], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths[1], "wb") as f:
        f.write(leaf.public_bytes(serialization.Encoding.PEM))
    with open(paths[2], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return tuple(paths)


def welcome() -> bytes:
    return hc.encode_server({"kind": "welcome", "sessionId": str(uuid.uuid4()), "userId": USER,
                             "protocolVersion": 1, "serverTime": 1795600800000,
                             "tokenExpiresAt": 1795601700000,
                             "limits": {"maxFrameSize": 65536, "sendRatePerSec": 20,
                                        "sendBurst": 40, "idleTimeoutMs": 45000}})


def closing_unauthenticated() -> bytes:
    return hc.encode_server({"kind": "closing", "code": "unauthenticated",
                             "reason": "bad token", "supportedVersions": [1]})


async def serve(cert: str, key: str):
    from aioquic.asyncio import QuicConnectionProtocol, serve as aioquic_serve
    from aioquic.h3 import events as he
    from aioquic.h3.connection import H3_ALPN, H3Connection
    from aioquic.quic import events as qe
    from aioquic.quic.configuration import QuicConfiguration

    class Server(QuicConnectionProtocol):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.h3 = None
            self.decoders: dict[int, hc.StreamDecoder] = {}
            self.session_id = None

        def quic_event_received(self, ev):
            if isinstance(ev, qe.ProtocolNegotiated):
                if ev.alpn_protocol in H3_ALPN:
                    self.h3 = H3Connection(self._quic, enable_webtransport=True)
                return
            if self.h3 is None:  # native QUIC, haberci/1
                if isinstance(ev, qe.StreamDataReceived):
                    self.on_bytes(ev.stream_id, ev.data)
                elif isinstance(ev, qe.DatagramFrameReceived):
                    self.on_datagram(ev.data)
                return
            for h in self.h3.handle_event(ev):
                if isinstance(h, he.HeadersReceived):
                    hd = dict(h.headers)
                    ok = (hd.get(b":method") == b"CONNECT" and hd.get(b":protocol") == b"webtransport"
                          and hd.get(b":path") == b"/v1/rt")
                    self.session_id = h.stream_id
                    self.h3.send_headers(h.stream_id, [(b":status", b"200" if ok else b"404"),
                                                       (b"sec-webtransport-http3-draft", b"draft02")],
                                         end_stream=not ok)
                    self.transmit()
                elif isinstance(h, he.WebTransportStreamDataReceived):
                    self.on_bytes(h.stream_id, h.data)
                elif isinstance(h, he.DatagramReceived):
                    self.on_datagram(h.data)

        def reply(self, stream_id, body, end=False):
            self._quic.send_stream_data(stream_id, hc.delimit(body), end)

        def on_bytes(self, stream_id, data):
            dec = self.decoders.setdefault(stream_id, hc.StreamDecoder())
            for body in dec.feed(data):
                f = hc.decode_client(body)
                if f["kind"] == "hello" and f["accessToken"] == "bad":
                    self.reply(stream_id, closing_unauthenticated(), end=True)
                    if self.h3 is not None:
                        self.h3.send_data(self.session_id, hc.encode_capsule(
                            hc.CLOSE_WEBTRANSPORT_SESSION, (6).to_bytes(4, "big") + b"unauthenticated"),
                            end_stream=True)
                    else:
                        self.transmit()
                        self._quic.close(error_code=6, reason_phrase="unauthenticated")
                elif f["kind"] == "hello":
                    self.reply(stream_id, welcome())
                elif f["kind"] == "ping":
                    self.reply(stream_id, hc.encode_server({"kind": "pong", "nonce": f["nonce"]}))
            self.transmit()

        def on_datagram(self, data):
            f = hc.decode_client_datagram(data)
            body = hc.encode_server({"kind": "typing", "conversationId": f["conversationId"],
                                     "userId": USER, "state": f["state"]})
            if self.h3 is not None:
                self.h3.send_datagram(self.session_id, body)
            else:
                self._quic.send_datagram_frame(body)
            self.transmit()

    cfg = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN + [hc.QUIC_ALPN],
                            max_datagram_frame_size=65536)
    cfg.load_cert_chain(cert, key)
    server = await aioquic_serve("::", 0, configuration=cfg, create_protocol=Server)
    port = server._transport.get_extra_info("sockname")[1]
    return server, port


class TransportTest(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.ca, cert, key = make_certs(self.tmp.name)
        self.server, self.port = await serve(cert, key)

    async def asyncTearDown(self):
        self.server.close()
        self.tmp.cleanup()

    async def session(self, kind: str, token: str = "good") -> hc.Session:
        t = await hc.open_transport(kind, self.ca, udp_port=self.port, timeout=5)
        s = hc.Session(t, kind)
        return s

    async def roundtrip(self, kind: str):
        s = await self.session(kind)
        try:
            w = await s.hello("good", timeout=5)
            self.assertEqual(w["userId"], USER)
            for _ in range(3):
                await s.ping(5)
            await s.send_frame({"kind": "typing", "conversationId": CONV, "state": "started"},
                               datagram=True)
            f = await s.wait_for({"kind": "typing", "conversationId": CONV}, 5)
            self.assertTrue(f.get("datagram"))
            with self.assertRaises(hc.ProtocolError):  # a Send never goes as a datagram
                await s.send_frame({"kind": "send", "clientMsgId": str(uuid.uuid4()),
                                    "recipient": {"userId": USER}, "type": "text",
                                    "content": "x"}, datagram=True)
            self.assertEqual(s.anomalies, [])
        finally:
            await s.close()

    async def bad_token(self, kind: str, want_kind: str):
        s = await self.session(kind)
        try:
            with self.assertRaises(hc.Closed) as cm:
                await s.hello("bad", timeout=5)
            self.assertEqual(cm.exception.closing["code"], "unauthenticated")
            _, info = await s.wait_closed(5)
            self.assertEqual((info.kind, info.code), (want_kind, 6), str(info))
        finally:
            await s.close()

    async def test_webtransport(self):
        await self.roundtrip("webtransport")

    async def test_webtransport_bad_token(self):
        await self.bad_token("webtransport", "wt-session")

    async def test_quic(self):
        await self.roundtrip("quic")

    async def test_quic_bad_token(self):
        await self.bad_token("quic", "quic-app")

    async def test_webtransport_wrong_path(self):
        t = hc.WebTransportTransport("localhost", self.port, self.ca, path="/nope")
        with self.assertRaises(hc.WebTransportError):
            await t.open(5)
        await t.close()


if __name__ == "__main__":
    unittest.main()
