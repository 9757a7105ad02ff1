"""Interop scenario: the Python client (haberci_client.py) against a running Haberci stack.

    python tests/python/interop.py [--ca .dev/certs/ca.pem] [--tcp-port 8443] [--udp-port 4433]
        [--a-transport websocket] [--b-transport webtransport] [--c-transport quic]
        [--peer-cmd "COMMAND"] [--skip-messaging] [-v]

Users: Alice (A, always this Python client), Bob (B, the peer: this Python client in process,
or an external program with --peer-cmd) and Carol (C, a third transport). Each step prints
PASS/FAIL; the exit status is non-zero if any step failed. Every wait is bounded (a frame
expected within a timeout); nothing sleeps to synchronise.

External peer (--peer-cmd): a program that speaks one JSON object per line on stdin/stdout.
Frames are in the JSON form of docs/PROTOCOL.md ("JSON forms", as in the golden vectors).
Every request has an "id" that its reply repeats:

  {"id":1,"op":"connect","transport":"websocket|webtransport|quic","host":"localhost",
   "tcpPort":8443,"udpPort":4433,"ca":"/path/ca.pem","token":"<jwt>","resume":[{...}]}
      -> {"id":1,"ok":true,"frame":{"kind":"welcome",...}}
      or {"id":1,"ok":false,"error":"...","closing":{...}|null,
          "close":{"kind":"websocket|quic-app|wt-session|...","code":4006,"reason":"..."}|null}
  {"id":2,"op":"send","frame":{"kind":"send",...}}          -> {"id":2,"ok":true}
  {"id":3,"op":"expect","match":[{"kind":"sent","clientMsgId":"..."},{"kind":"error"}],
   "timeoutMs":10000}
      -> {"id":3,"ok":true,"frame":{...}}: the first received, not yet taken, frame that
         matches any pattern (a pattern matches when each of its keys equals the frame's,
         recursively); frames that match nothing stay queued for later expects.
      or {"id":3,"ok":false,"error":"timeout ..."|"closed ...", "closing":..., "close":...}
  {"id":4,"op":"close"}  -> {"id":4,"ok":true,"anomalies":["gap: ...", ...],"duplicates":[...]}
      (a clean close; anomalies = gaps or bad frames the peer saw, a failure; duplicates =
      Messages at or below the last seq, dropped and reported as a note)
  EOF on stdin: exit.

`python haberci_client.py --stdio-peer` is such a program (used to test this contract).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import ssl
import sys
import time
import traceback
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import haberci_client as hc  # noqa: E402

T = 10.0  # seconds: the bound on every wait


class Failure(Exception):
    pass


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise Failure(msg)


# ---------------------------------------------------------------------------------------------
# HTTP API
# ---------------------------------------------------------------------------------------------

class Api:
    def __init__(self, base: str, ca: str):
        self.base = base
        self.ctx = ssl.create_default_context(cafile=ca)

    def register(self, prefix: str) -> dict:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        body = {"username": name, "email": f"{name}@example.com",
                "password": "python interop password", "displayName": prefix.capitalize()}
        req = urllib.request.Request(f"{self.base}/v1/auth/register", method="POST",
                                     data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=T) as r:
                check(r.status == 201, f"register {name}: HTTP {r.status}")
                data = json.load(r)
        except urllib.error.HTTPError as e:
            raise Failure(f"register {name}: HTTP {e.code} {e.read()[:300]!r}")
        return {"name": name, "id": data["user"]["id"], "token": data["tokens"]["accessToken"]}


# ---------------------------------------------------------------------------------------------
# Peers
# ---------------------------------------------------------------------------------------------

class PyPeer:
    """The peer interface, implemented in process with haberci_client.Session."""

    def __init__(self, name: str, ports: dict, ca: str, log):
        self.name, self.ports, self.ca, self.log = name, ports, ca, log
        self.session: Optional[hc.Session] = None

    async def connect(self, transport: str, token: str, resume: list = ()) -> dict:
        self.session = None
        t = await hc.open_transport(transport, self.ca, timeout=T, **self.ports)
        s = hc.Session(t, self.name, self.log)
        try:
            w = await s.hello(token, list(resume), timeout=T)
        except BaseException:
            await s.close()
            raise
        self.session = s
        return w

    async def send(self, frame: dict) -> None:
        await self.session.send_frame(frame)

    async def expect(self, patterns: list[dict], timeout: float = T) -> dict:
        return await self.session.wait_for(lambda f: any(hc.matches(f, p) for p in patterns),
                                           timeout, " or ".join(map(str, patterns)))

    async def close(self) -> list[str]:
        s, self.session = self.session, None
        if s is None:
            return []
        await s.close()
        self.duplicates = s.duplicates
        return s.anomalies


class ExternalPeer:
    """The peer interface over the JSON-lines protocol of this module's docstring."""

    def __init__(self, name: str, cmd: str, ports: dict, ca: str, log):
        self.name, self.cmd, self.ports, self.ca, self.log = name, cmd, ports, ca, log
        self.proc: Optional[asyncio.subprocess.Process] = None
        self.next_id = 0

    async def _call(self, req: dict, timeout: float) -> dict:
        if self.proc is None:
            self.proc = await asyncio.create_subprocess_exec(
                *shlex.split(self.cmd), stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, limit=1 << 20)
        self.next_id += 1
        req = dict(req, id=self.next_id)
        self.log(f"{self.name} (external) <<< {json.dumps(req)[:300]}")
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        await self.proc.stdin.drain()
        while True:
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            except asyncio.TimeoutError:
                raise Failure(f"{self.name}: external peer gave no reply to {req['op']} "
                              f"within {timeout}s")
            if not line:
                raise Failure(f"{self.name}: external peer exited "
                              f"(status {await self.proc.wait()})")
            rep = json.loads(line)
            self.log(f"{self.name} (external) >>> {line.decode().strip()[:300]}")
            if rep.get("id") == req["id"]:
                return rep

    @staticmethod
    def _raise(rep: dict, what: str):
        if rep.get("closing") is not None or rep.get("close") is not None:
            c = rep.get("close")
            info = hc.CloseInfo(c["kind"], c.get("code"), c.get("reason", "")) if c else None
            raise hc.Closed(rep.get("closing"), info, what)
        if "timeout" in rep.get("error", ""):
            raise hc.Timeout(f"{what}: {rep['error']}")
        raise Failure(f"{what}: {rep.get('error')}")

    async def connect(self, transport: str, token: str, resume: list = ()) -> dict:
        rep = await self._call({"op": "connect", "transport": transport, "token": token,
                                "host": self.ports["host"], "tcpPort": self.ports["tcp_port"],
                                "udpPort": self.ports["udp_port"], "ca": self.ca,
                                "resume": list(resume)}, 3 * T)
        if not rep["ok"]:
            self._raise(rep, f"{self.name} connect")
        return rep["frame"]

    async def send(self, frame: dict) -> None:
        rep = await self._call({"op": "send", "frame": frame}, T)
        if not rep["ok"]:
            self._raise(rep, f"{self.name} send")

    async def expect(self, patterns: list[dict], timeout: float = T) -> dict:
        rep = await self._call({"op": "expect", "match": patterns,
                                "timeoutMs": int(timeout * 1000)}, timeout + T)
        if not rep["ok"]:
            self._raise(rep, f"{self.name} expect {patterns}")
        return rep["frame"]

    async def close(self) -> list[str]:
        if self.proc is None:
            return []
        rep = await self._call({"op": "close"}, T)
        self.duplicates = rep.get("duplicates", [])
        return rep.get("anomalies", [])

    async def shutdown(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()


# ---------------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------------

class Runner:
    def __init__(self, args):
        self.args = args
        self.ca = args.ca
        self.ports = {"host": args.host, "tcp_port": args.tcp_port, "udp_port": args.udp_port}
        self.api = Api(f"https://{args.host}:{args.tcp_port}", args.ca)
        self.results: list[tuple[str, str, str]] = []
        self.notes: list[str] = []
        self.log = (lambda *a: print("   ", *a, flush=True)) if args.verbose else (lambda *a: None)

    async def step(self, name: str, coro) -> bool:
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(coro, 6 * T)
        except (Failure, hc.Timeout, hc.Closed, hc.ProtocolError, ConnectionError, OSError,
                hc.WebTransportError, asyncio.TimeoutError) as e:
            msg = f"{type(e).__name__}: {e}" if not isinstance(e, Failure) else str(e)
            self.results.append(("FAIL", name, msg))
            print(f"FAIL  {name}  ({time.monotonic() - t0:.2f}s)\n      {msg}", flush=True)
            return False
        except Exception as e:  # a bug in this runner, still a failure
            self.results.append(("FAIL", name, f"{type(e).__name__}: {e}"))
            print(f"FAIL  {name}\n{traceback.format_exc()}", flush=True)
            return False
        self.results.append(("PASS", name, ""))
        print(f"PASS  {name}  ({time.monotonic() - t0:.2f}s)", flush=True)
        return True

    def skip(self, name: str, why: str) -> None:
        self.results.append(("SKIP", name, why))
        print(f"SKIP  {name}  ({why})", flush=True)

    def py(self, name: str) -> PyPeer:
        return PyPeer(name, self.ports, self.ca, self.log)

    # -- handshake and conformance, per transport -------------------------------------------

    async def raw(self, transport: str, name: str) -> hc.Session:
        t = await hc.open_transport(transport, self.ca, timeout=T, **self.ports)
        return hc.Session(t, name, self.log)

    def expected_close(self, transport: str, code_name: str) -> tuple[str, int]:
        code = hc.CODE_BY_NAME[code_name]
        if transport == "websocket":
            return "websocket", hc.websocket_close_code(code)
        if transport == "webtransport":
            return "wt-session", hc.quic_app_code(code)
        return "quic-app", hc.quic_app_code(code)

    async def expect_closing(self, s: hc.Session, transport: str, code_name: str,
                             first: hc.Closed | None = None) -> dict:
        closing = first.closing if first else None
        if closing is None:
            closing = await s.wait_for({"kind": "closing"}, T, f"Closing{{{code_name}}}")
        check(closing["code"] == code_name, f"Closing code {closing['code']}, expected {code_name}")
        if 1 not in closing["supportedVersions"]:
            self.notes.append(f"{transport}: Closing{{{code_name}}} has supportedVersions "
                              f"{closing['supportedVersions']} (the spec's lifecycle shows it "
                              f"in every Closing; only unsupported_version fills it)")
        _, info = await s.wait_closed(T)
        kind, code = self.expected_close(transport, code_name)
        if transport == "webtransport" and info.kind == "quic-app":
            self.notes.append(f"WebTransport {code_name}: session ended by a QUIC "
                              f"CONNECTION_CLOSE (code {info.code}), not CLOSE_WEBTRANSPORT_SESSION")
            kind = "quic-app"
        check(info.kind == kind and info.code == code,
              f"transport closed with {info}, expected {kind} code {code}")
        if transport == "websocket":
            check(info.reason == code_name, f"WebSocket close reason {info.reason!r}, "
                                            f"expected {code_name!r}")
        return closing

    async def t_handshake(self, transport: str, user: dict) -> None:
        s = await self.raw(transport, f"{transport}-hs")
        try:
            w = await s.hello(user["token"], timeout=T)
            check(w["userId"] == user["id"], f"Welcome.userId {w['userId']} != {user['id']}")
            check(w["protocolVersion"] == 1, f"Welcome.protocolVersion {w['protocolVersion']}")
            lim = w["limits"]
            check(lim["maxFrameSize"] >= 1, f"limits {lim}")
            for _ in range(3):
                await s.ping(T)
            check(not s.anomalies, f"anomalies: {s.anomalies}")
        finally:
            await s.close()
        check(s.closing is None, f"server sent {s.closing}")
        if getattr(s.t, "close_echoed", None) is False:
            self.notes.append("websocket: the server sends no Close frame back when the client "
                              "closes with 1000 (RFC 6455 5.5.1 says it must); it drops TCP")

    async def t_bad_token(self, transport: str) -> None:
        s = await self.raw(transport, f"{transport}-badtoken")
        try:
            try:
                w = await s.hello("not-a-jwt." + uuid.uuid4().hex, timeout=T)
                raise Failure(f"a bad token got {w}")
            except hc.Closed as e:
                await self.expect_closing(s, transport, "unauthenticated", e)
        finally:
            await s.close()

    async def t_bad_version(self, transport: str, user: dict) -> None:
        s = await self.raw(transport, f"{transport}-v2")
        try:
            try:
                w = await s.hello(user["token"], version=2, timeout=T)
                raise Failure(f"protocol version 2 got {w}")
            except hc.Closed as e:
                c = await self.expect_closing(s, transport, "unsupported_version", e)
                check(c["supportedVersions"] == [1], f"supportedVersions {c['supportedVersions']}")
        finally:
            await s.close()

    async def t_frame_before_hello(self, transport: str) -> None:
        s = await self.raw(transport, f"{transport}-nohello")
        try:
            await s.send_frame({"kind": "ping", "nonce": 1})
            await self.expect_closing(s, transport, "unauthenticated")
        finally:
            await s.close()

    async def t_nonfatal_errors(self, transport: str, user: dict) -> None:
        """Unknown frame kind and an invalid field are answered with Error; the session goes on."""
        s = await self.raw(transport, f"{transport}-errors")
        try:
            await s.hello(user["token"], timeout=T)
            await s.t.send(bytes.fromhex("980601"))  # ClientFrame field 99: a newer client's kind
            await s.wait_for({"kind": "error", "code": "unknown_frame_kind"}, T)
            conv = str(uuid.uuid4())
            await s.send_frame({"kind": "ack", "conversationId": conv, "seq": 0}, check=False)
            await s.wait_for({"kind": "error", "code": "invalid_field"}, T)
            cmid = str(uuid.uuid4())
            await s.send_frame({"kind": "send", "clientMsgId": cmid, "recipient":
                                {"userId": user["id"]}, "type": "text", "content": ""},
                               check=False)  # empty text: invalid_field naming the client_msg_id
            e = await s.wait_for(lambda f: f["kind"] == "error" and f["clientMsgId"] == cmid, T,
                                 "Error for an empty Send")
            check(e["code"] in ("invalid_field", "unavailable"), f"empty Send answered {e}")
            if e["code"] == "unavailable":
                self.notes.append(f"{transport}: an invalid Send (empty text) is answered "
                                  f"Error{{unavailable}}, not invalid_field, while messaging "
                                  f"is not served")
            await s.ping(T)
            check(s.close_info is None, f"session closed: {s.close_info}")
            check(not s.anomalies, f"anomalies: {s.anomalies}")
        finally:
            await s.close()

    async def t_second_hello(self, transport: str, user: dict) -> None:
        s = await self.raw(transport, f"{transport}-hello2")
        try:
            await s.hello(user["token"], timeout=T)
            await s.send_frame({"kind": "hello", "accessToken": user["token"],
                                "protocolVersion": 1})
            await self.expect_closing(s, transport, "bad_frame")
        finally:
            await s.close()

    async def t_text_message(self, user: dict) -> None:
        s = await self.raw("websocket", "ws-text")
        try:
            await s.hello(user["token"], timeout=T)
            await s.t.send_raw('{"kind":"ping","nonce":7}')
            await self.expect_closing(s, "websocket", "text_message_refused")
        finally:
            await s.close()

    async def t_zero_length(self, transport: str, user: dict) -> None:
        s = await self.raw(transport, f"{transport}-zero")
        try:
            await s.hello(user["token"], timeout=T)
            await s.t.send_raw(b"\x00")
            await self.expect_closing(s, transport, "bad_frame")
        finally:
            await s.close()

    # -- messaging ---------------------------------------------------------------------------

    async def send_and_sent(self, peer, frm: dict, to: dict, content: str,
                            cmid: Optional[str] = None) -> dict:
        cmid = cmid or str(uuid.uuid4())
        await peer.send({"kind": "send", "clientMsgId": cmid, "recipient": {"userId": to["id"]},
                         "type": "text", "content": content})
        f = await peer.expect([{"kind": "sent", "clientMsgId": cmid},
                               {"kind": "error", "clientMsgId": cmid}])
        if f["kind"] == "error":
            raise Failure(f"{frm['name']}'s Send was answered {f}"
                          + (" (messaging not served by this gateway)"
                             if f["code"] == "unavailable" else ""))
        return f

    @staticmethod
    def check_message(m: dict, sent: dict, frm: dict, to: dict, content: str) -> None:
        want = {"id": sent["messageId"], "senderId": frm["id"], "recipientId": to["id"],
                "type": "text", "content": content, "conversationId": sent["conversationId"],
                "seq": sent["seq"], "timestamp": sent["timestamp"]}
        bad = {k: (m.get(k), v) for k, v in want.items() if m.get(k) != v}
        check(not bad, f"Message differs from its Sent (got, want): {bad}")
        check(m["status"] in ("sent", "delivered", "read"), f"Message.status {m['status']}")

    async def messaging(self, A: PyPeer, B, a: dict, b: dict, at: str, bt: str) -> None:
        st = {}

        async def connect():
            wa = await A.connect(at, a["token"])
            wb = await B.connect(bt, b["token"])
            check(wa["userId"] == a["id"], f"A Welcome.userId {wa['userId']}")
            check(wb["userId"] == b["id"], f"B Welcome.userId {wb['userId']}")
            nonce = 4242
            await B.send({"kind": "ping", "nonce": nonce})
            await B.expect([{"kind": "pong", "nonce": nonce}])
        if not await self.step(f"messaging: connect A over {at}, B over {bt}, ping", connect()):
            return

        async def a_to_b():
            text = "Merhaba Bob! 👋"
            sent = await self.send_and_sent(A, a, b, text)
            m = await B.expect([{"kind": "message", "id": sent["messageId"]}])
            self.check_message(m, sent, a, b, text)
            own = await A.expect([{"kind": "message", "id": sent["messageId"]}])
            self.check_message(own, sent, a, b, text)
            st.update(conv=sent["conversationId"], seq=sent["seq"], first=sent)
        if not await self.step("A->B: Sent, then Message to B (and to A's own session)",
                               a_to_b()):
            return
        conv = st["conv"]

        async def b_to_a():
            text = "Selam Alice, nasılsın?"
            sent = await self.send_and_sent(B, b, a, text)
            check(sent["conversationId"] == conv, "B->A used another conversation")
            check(sent["seq"] == st["seq"] + 1, f"seq {sent['seq']}, expected {st['seq'] + 1}")
            m = await A.expect([{"kind": "message", "id": sent["messageId"]}])
            self.check_message(m, sent, b, a, text)
            own = await B.expect([{"kind": "message", "id": sent["messageId"]}])
            self.check_message(own, sent, b, a, text)
            st["seq"] = sent["seq"]
        if not await self.step("B->A: same conversation, next seq, Message to A", b_to_a()):
            return

        async def burst():
            texts = [f"burst {i} {'ç' * i}" for i in range(8)]
            cmids = [str(uuid.uuid4()) for _ in texts]
            for cmid, text in zip(cmids, texts):  # pipelined: no wait between sends
                await A.send({"kind": "send", "clientMsgId": cmid,
                              "recipient": {"userId": b["id"]}, "type": "text", "content": text})
            sents = {}
            for cmid in cmids:
                f = await A.expect([{"kind": "sent", "clientMsgId": cmid},
                                    {"kind": "error", "clientMsgId": cmid}])
                check(f["kind"] == "sent", f"burst Send answered {f}")
                sents[cmid] = f
            seqs = sorted(f["seq"] for f in sents.values())
            check(seqs == list(range(st["seq"] + 1, st["seq"] + 1 + len(texts))),
                  f"burst seqs {seqs}, expected consecutive after {st['seq']}")
            by_seq = {f["seq"]: (cmid, f) for cmid, f in sents.items()}
            got = []
            for _ in texts:  # B's Messages of this conversation, in arrival order
                got.append(await B.expect([{"kind": "message", "conversationId": conv}]))
            check([m["seq"] for m in got] == seqs,
                  f"B got seqs {[m['seq'] for m in got]} in this order, expected {seqs}")
            for m in got:
                cmid, f = by_seq[m["seq"]]
                self.check_message(m, f, a, b, texts[cmids.index(cmid)])
            order = [texts.index(m["content"]) for m in got]
            if order != sorted(order):
                self.notes.append(f"pipelined Sends from one session were stored out of send "
                                  f"order: {order} (the spec does not promise send order)")
            for _ in texts:
                await A.expect([{"kind": "message", "conversationId": conv}])
            st["seq"] = seqs[-1]
        if not await self.step("A->B burst of 8 pipelined Sends: consecutive seqs, B gets them "
                               "in seq order", burst()):
            return

        async def duplicate():
            first = st["first"]
            again = await self.send_and_sent(A, a, b, "Merhaba Bob! 👋", first["clientMsgId"])
            for k in ("messageId", "conversationId", "seq", "timestamp"):
                check(again[k] == first[k], f"resent Send: {k} {again[k]} != original {first[k]}")
            # Nothing new was stored: the next message is the next seq, and B sees no copy.
            sent = await self.send_and_sent(A, a, b, "after the retry")
            check(sent["seq"] == st["seq"] + 1, f"seq {sent['seq']} after a retry, expected "
                                                f"{st['seq'] + 1}")
            m = await B.expect([{"kind": "message", "conversationId": conv}])
            while m["seq"] <= st["seq"]:  # a re-delivered copy: harmless, noted
                self.notes.append(f"B received seq {m['seq']} again after the retried Send")
                m = await B.expect([{"kind": "message", "conversationId": conv}])
            check(m["id"] == sent["messageId"], f"B's next Message is {m}, expected "
                                                f"{sent['messageId']}")
            await A.expect([{"kind": "message", "id": sent["messageId"]}])
            st["seq"] = sent["seq"]
        if not await self.step("same client_msg_id twice: the same Sent, nothing stored twice",
                               duplicate()):
            return

        async def receipts():
            seq = st["seq"]
            await B.send({"kind": "ack", "conversationId": conv, "seq": seq})
            f = await A.expect([{"kind": "status", "conversationId": conv, "userId": b["id"],
                                 "delivered": seq}])
            check(f["read"] in (None, 0) or f["read"] <= seq, f"Status {f}")
            await B.send({"kind": "read", "conversationId": conv, "seq": seq - 2})
            f = await A.expect([{"kind": "status", "conversationId": conv, "userId": b["id"],
                                 "read": seq - 2}])
            check(f["delivered"] == seq, f"Status after Read: {f}")
            await B.send({"kind": "read", "conversationId": conv, "seq": seq})
            await A.expect([{"kind": "status", "conversationId": conv, "userId": b["id"],
                             "delivered": seq, "read": seq}])
        if not await self.step("B Ack then Read: A sees Status delivered, then read", receipts()):
            return

        async def resume():
            acked = st["seq"]
            anomalies = await B.close()
            check(not anomalies, f"B saw anomalies: {anomalies}")
            self.dup_notes(B)
            sent = await self.send_and_sent(A, a, b, "while you were away")
            await A.expect([{"kind": "message", "id": sent["messageId"]}])
            # Explicit resume position: the backlog is exactly what follows it.
            await B.connect(bt, b["token"], [{"conversationId": conv, "lastSeq": acked}])
            m = await B.expect([{"kind": "message", "conversationId": conv}])
            check(m["seq"] == acked + 1 and m["id"] == sent["messageId"],
                  f"backlog after lastSeq {acked}: got seq {m['seq']} {m['content']!r}")
            self.check_message(m, sent, a, b, "while you were away")
            anomalies = await B.close()
            check(not anomalies, f"B saw anomalies: {anomalies}")
            self.dup_notes(B)
            # Empty resume: from the delivered watermark (B acked `acked`), so the same message.
            await B.connect(bt, b["token"])
            m = await B.expect([{"kind": "message", "conversationId": conv}])
            check(m["seq"] == acked + 1, f"empty resume after Ack {acked}: got seq {m['seq']}")
            await B.send({"kind": "ack", "conversationId": conv, "seq": m["seq"]})
            await A.expect([{"kind": "status", "conversationId": conv, "userId": b["id"],
                             "delivered": m["seq"]}])
            st["seq"] = m["seq"]
        await self.step("B reconnects with resume {conv, lastSeq}, then with an empty resume: "
                        "the backlog is what it lacks", resume())

    def dup_notes(self, peer) -> None:
        for d in getattr(peer, "duplicates", []):
            self.notes.append(f"{peer.name} received a {d} (dropped as the spec says)")
        peer.duplicates = []

    async def third(self, A: PyPeer, a: dict, c: dict, ct: str) -> None:
        C = self.py("carol")

        async def run():
            await C.connect(ct, c["token"])
            sent = await self.send_and_sent(C, c, a, "Carol here")
            m = await A.expect([{"kind": "message", "id": sent["messageId"]}])
            self.check_message(m, sent, c, a, "Carol here")
            check(sent["seq"] == 1, f"first message of a new conversation has seq {sent['seq']}")
            sent2 = await self.send_and_sent(A, a, c, "hi Carol")
            m = await C.expect([{"kind": "message", "id": sent2["messageId"]}])
            self.check_message(m, sent2, a, c, "hi Carol")
            await C.send({"kind": "read", "conversationId": sent2["conversationId"], "seq": 2})
            await A.expect([{"kind": "status", "conversationId": sent2["conversationId"],
                             "userId": c["id"], "delivered": 2, "read": 2}])
        try:
            await self.step(f"C over {ct} <-> A: a new conversation starts at seq 1", run())
        finally:
            await C.close()

    # -- main ---------------------------------------------------------------------------------

    async def run(self) -> int:
        a = self.api.register("alice")
        b = self.api.register("bob")
        c = self.api.register("carol")
        transports = list(dict.fromkeys([self.args.a_transport, self.args.b_transport,
                                         self.args.c_transport]))
        for t in transports:
            if not await self.step(f"{t}: Hello -> Welcome (user id, version, limits), "
                                   f"Ping -> Pong", self.t_handshake(t, a)):
                continue
            await self.step(f"{t}: bad token -> Closing{{unauthenticated}} and close code",
                            self.t_bad_token(t))
            if self.args.quick:
                continue
            await self.step(f"{t}: protocol_version 2 -> Closing{{unsupported_version, [1]}}",
                            self.t_bad_version(t, a))
            await self.step(f"{t}: a frame before Hello -> Closing{{unauthenticated}}",
                            self.t_frame_before_hello(t))
            await self.step(f"{t}: unknown frame kind, invalid field -> Error, session goes on",
                            self.t_nonfatal_errors(t, a))
            await self.step(f"{t}: a second Hello -> Closing{{bad_frame}}",
                            self.t_second_hello(t, a))
            if t == "websocket":
                await self.step("websocket: a text message -> Closing{text_message_refused}",
                                self.t_text_message(a))
            else:
                await self.step(f"{t}: a zero-length frame -> Closing{{bad_frame}}",
                                self.t_zero_length(t, a))
        if self.args.skip_messaging:
            self.skip("messaging", "--skip-messaging")
        else:
            A = self.py("alice")
            if self.args.peer_cmd:
                B = ExternalPeer("bob", self.args.peer_cmd, self.ports, self.ca, self.log)
            else:
                B = self.py("bob")
            try:
                await self.messaging(A, B, a, b, self.args.a_transport, self.args.b_transport)
                if A.session is not None:
                    await self.third(A, a, c, self.args.c_transport)
            finally:
                anomalies = await A.close()
                anomalies_b = await B.close()
                self.dup_notes(A)
                self.dup_notes(B)
                if isinstance(B, ExternalPeer):
                    await B.shutdown()
            if anomalies or anomalies_b:
                self.results.append(("FAIL", "no gaps, duplicates or bad frames seen",
                                     f"A: {anomalies} B: {anomalies_b}"))
                print(f"FAIL  anomalies seen: A {anomalies} B {anomalies_b}")
        return self.summary()

    def summary(self) -> int:
        n = {k: sum(1 for r in self.results if r[0] == k) for k in ("PASS", "FAIL", "SKIP")}
        print(f"\ninterop: {n['PASS']} passed, {n['FAIL']} failed, {n['SKIP']} skipped")
        for w in sorted(hc.CERT_WARNINGS) + list(dict.fromkeys(self.notes)):
            print(f"note: {w}")
        for status, name, msg in self.results:
            if status == "FAIL":
                print(f"  FAILED: {name}: {msg}")
        return 1 if n["FAIL"] else 0


def main() -> int:
    root = Path(__file__).resolve().parents[2]
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="localhost")
    p.add_argument("--tcp-port", type=int,
                   default=int(os.environ.get("HABERCI_GATEWAY_TCP_PORT", 8443)))
    p.add_argument("--udp-port", type=int,
                   default=int(os.environ.get("HABERCI_GATEWAY_UDP_PORT", 4433)))
    p.add_argument("--ca", default=str(root / ".dev" / "certs" / "ca.pem"))
    p.add_argument("--a-transport", default="websocket", choices=["websocket", "webtransport", "quic"])
    p.add_argument("--b-transport", default="webtransport",
                   choices=["websocket", "webtransport", "quic"])
    p.add_argument("--c-transport", default="quic", choices=["websocket", "webtransport", "quic"])
    p.add_argument("--peer-cmd", help="run Bob as an external program (JSON lines, see above)")
    p.add_argument("--skip-messaging", action="store_true")
    p.add_argument("--quick", action="store_true", help="only handshake and bad token per transport")
    p.add_argument("-v", "--verbose", action="store_true", help="print every frame")
    args = p.parse_args()
    return asyncio.run(Runner(args).run())


if __name__ == "__main__":
    sys.exit(main())
