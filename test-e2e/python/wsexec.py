#!/usr/bin/env python3
"""wsexec: a remotecommand exec client over WebSocket (v5/v4.channel.k8s.io, binary, and
the base64 ones), on the `websockets` library (Debian's python3-websockets), for the e2e
tests.

Every message is one channel's data, first byte the channel: 0 stdin, 1 stdout, 2 stderr,
3 error (a JSON metav1.Status), 4 resize; v5's [255, channel] closes a channel. With a
base64 subprotocol messages are text: the channel as a digit, then the data in base64.

Usage: wsexec.py URL PROTOCOL [stdin] [stall=SECS] [cafile=PEM] [pin=SHA256]: stdin (with
"stdin") is sent, then closed (v5); with stall=SECS nothing is read for SECS seconds first
(a slow client). An https:// URL is served over TLS (wss://), verified by Python's `ssl`
against the system's CAs, or the CA in cafile=PEM; with pin=SHA256 (hex of the DER) the
server's certificate is fetched, must have that fingerprint, and is then the only trusted
one (the host name is still checked against it).
Exit codes: the command's; 100 when the upgrade is refused; 101 on any other failure;
102 when the certificate is not the pinned one.
"""
import asyncio
import base64
import hashlib
import json
import ssl
import sys
import urllib.parse

import websockets


def encode(protocol, channel, data):
    if "base64" in protocol:
        return chr(ord("0") + channel) + base64.b64encode(data).decode()
    return bytes([channel]) + data


def decode(protocol, msg):
    if "base64" in protocol:
        if not isinstance(msg, str) or not msg:
            return None, b""
        return ord(msg[0]) - ord("0"), base64.b64decode(msg[1:])
    if not isinstance(msg, bytes) or not msg:
        return None, b""
    return msg[0], msg[1:]


def tls_context(url, cafile, pin):
    """The client's TLS settings for url, or None for plain WebSocket."""
    if not url.startswith("https://"):
        return None
    if pin:
        u = urllib.parse.urlsplit(url)
        pem = ssl.get_server_certificate((u.hostname, u.port))
        served = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()
        if served != pin.lower():
            print(f"wsexec: served certificate {served}, pinned {pin}", file=sys.stderr)
            sys.exit(102)
        return ssl.create_default_context(cadata=pem)
    return ssl.create_default_context(cafile=cafile)


async def run(url, protocol, send_stdin, stall, tls):
    url = url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    try:
        ws = await websockets.connect(url, subprotocols=[protocol], max_size=None, ssl=tls)
    except websockets.exceptions.InvalidStatusCode as e:
        print(f"upgrade refused: {e.status_code}", file=sys.stderr)
        return 100
    try:
        await asyncio.sleep(stall)
        if ws.subprotocol != protocol:
            print(f"negotiated {ws.subprotocol!r}", file=sys.stderr)
            return 101
        if send_stdin:
            data = sys.stdin.buffer.read()
            for i in range(0, len(data), 32768):
                await ws.send(encode(protocol, 0, data[i:i + 32768]))
            if protocol.startswith("v5."):
                await ws.send(b"\xff\x00")
        status = b""
        async for msg in ws:
            channel, payload = decode(protocol, msg)
            if channel == 1:
                sys.stdout.buffer.write(payload)
            elif channel == 2:
                sys.stderr.buffer.write(payload)
            elif channel == 3:
                status += payload
    finally:
        await ws.close()
    sys.stdout.flush()
    sys.stderr.flush()
    if not status:
        print("wsexec: empty error channel", file=sys.stderr)
        return 101
    st = json.loads(status)
    if st.get("status") == "Success":
        return 0
    if st.get("reason") == "NonZeroExitCode":
        for cause in (st.get("details") or {}).get("causes", []):
            if cause.get("reason") == "ExitCode":
                return int(cause["message"])
    print(f"wsexec: exec failed: {status!r}", file=sys.stderr)
    return 101


def option(name, default=None):
    return next((a[len(name) + 1:] for a in sys.argv[3:] if a.startswith(name + "=")), default)


if __name__ == "__main__":
    stall = float(option("stall", 0))
    try:
        tls = tls_context(sys.argv[1], option("cafile"), option("pin"))
        code = asyncio.run(run(sys.argv[1], sys.argv[2], "stdin" in sys.argv[3:], stall, tls))
    except (ssl.SSLError, OSError) as e:
        print(f"wsexec: {e}", file=sys.stderr)
        code = 101
    sys.exit(code)
