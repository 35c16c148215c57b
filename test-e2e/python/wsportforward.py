#!/usr/bin/env python3
"""wsportforward: a port-forward client over WebSocket (kubelet's portforward channels), on
the `websockets` library (Debian's python3-websockets), for the e2e tests.

The URL's `port` query names the port; channel 0 is its data, channel 1 its error, and the
server first writes the port (u16, little endian) on both. It sends N random bytes on the
data channel, expects the same bytes back (an echo server in the pod), then hangs up.

Usage: wsportforward.py URL PORT BYTES PROTOCOL
Exit codes: 0 when the bytes came back; 100 when the upgrade is refused; 102 when the error
channel reported something (printed); 101 on any other failure.
"""
import asyncio
import base64
import os
import sys

import websockets


def decode(protocol, msg):
    if "base64" in protocol:
        return ord(msg[0]) - ord("0"), base64.b64decode(msg[1:])
    return msg[0], msg[1:]


def encode(protocol, channel, data):
    if "base64" in protocol:
        return chr(ord("0") + channel) + base64.b64encode(data).decode()
    return bytes([channel]) + data


async def run(url, port, n, protocol):
    url = url.replace("http://", "ws://", 1) + f"?port={port}"
    try:
        ws = await websockets.connect(url, subprotocols=[protocol], max_size=None)
    except websockets.exceptions.InvalidStatusCode as e:
        print(f"upgrade refused: {e.status_code}", file=sys.stderr)
        return 100
    payload = os.urandom(n)
    got = bytearray()
    greeted = set()
    error = b""

    async def send():
        for i in range(0, n, 32768):
            await ws.send(encode(protocol, 0, payload[i:i + 32768]))

    sender = asyncio.create_task(send())
    try:
        async for msg in ws:
            channel, data = decode(protocol, msg)
            if channel not in greeted:
                greeted.add(channel)
                if data[:2] != port.to_bytes(2, "little"):
                    print(f"channel {channel} greeting {data[:2]!r}", file=sys.stderr)
                    return 101
                data = data[2:]
            if channel == 0:
                got += data
                if len(got) >= n:
                    break
            elif channel == 1:
                error += data
    finally:
        sender.cancel()
        await ws.close()
    if error:
        print(error.decode(errors="replace"), file=sys.stderr)
        return 102
    if bytes(got) != payload:
        print(f"{len(got)} bytes back of {n}, or altered", file=sys.stderr)
        return 101
    print(f"forwarded {n} bytes each way")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(run(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])))
