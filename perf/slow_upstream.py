#!/usr/bin/env python3
"""The slow shadow of the mirror-slow scenario: an HTTP/1.1 keep-alive server on 127.0.0.1:PORT that
answers every request with a small JSON body after DELAY_MS. Request bodies are read and discarded.

    perf/slow_upstream.py [PORT] [DELAY_MS]        (defaults 19004 500)
"""
import asyncio
import sys

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 19004
DELAY = (int(sys.argv[2]) if len(sys.argv) > 2 else 500) / 1000
BODY = b'{"service":"orders","version":"slow","ok":true}\n'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)


async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length:
                await reader.readexactly(length)
            await asyncio.sleep(DELAY)
            writer.write(RESPONSE)
            await writer.drain()
            if b"connection: close" in head.lower():
                break
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", PORT, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
