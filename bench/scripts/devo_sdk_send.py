#!/usr/bin/env python3
"""Benchmark helper: sends the benchmark's records to a Devo TLS endpoint with Devo's own
Python SDK (devo-sdk, `devo.sender.Sender` with `SenderConfigSSL` and a client certificate),
one `Sender.send` call per record, as a collector built on the SDK does.

Usage: devo_sdk_send.py HOST PORT CHAIN CERT KEY LINES_FILE
LINES_FILE holds one `tag<TAB>record` per line. Prints the records sent and the seconds the
sending took (reading the file is not counted) as one JSON object on stdout.
"""

import json
import sys
import time

from devo.sender import Sender, SenderConfigSSL


def main() -> int:
    if len(sys.argv) != 7:
        print(__doc__, file=sys.stderr)
        return 2
    host, port, chain, cert, key, path = sys.argv[1:7]
    with open(path, encoding="utf-8") as f:
        items = [line.rstrip("\n").split("\t", 1) for line in f if line.strip()]
    config = SenderConfigSSL(
        address=(host, int(port)), key=key, cert=cert, chain=chain, check_hostname=False
    )
    started = time.monotonic()
    sender = Sender(config=config)
    for tag, record in items:
        sender.send(tag=tag, msg=record)
    sender.close()
    print(json.dumps({"records": len(items), "seconds": time.monotonic() - started}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
