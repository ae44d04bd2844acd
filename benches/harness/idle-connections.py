#!/usr/bin/env python3
"""Opens N keep-alive client connections to egret, one request each, then holds them idle and
reports egret's RSS growth: the memory an idle downstream connection costs.
usage: idle-connections.py N PORT PID   (loopback only; bounded by N)"""
import asyncio, sys, os
N = int(sys.argv[1]); port = int(sys.argv[2]); pid = int(sys.argv[3])
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])
async def one(i, conns):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET / HTTP/1.1\r\nHost: upstream.test\r\n\r\n")
    await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    n = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
    await r.readexactly(n)
    conns.append((r, w))
async def main():
    before = rss()
    conns = []
    sem = asyncio.Semaphore(200)
    async def guarded(i):
        async with sem: await one(i, conns)
    await asyncio.gather(*(guarded(i) for i in range(N)))
    await asyncio.sleep(2)
    after = rss()
    print(f"connections={len(conns)} rss_before_kib={before} rss_after_kib={after} delta_mib={(after-before)/1024:.1f} per_conn_kib={(after-before)/len(conns):.2f}")
    for r, w in conns: w.close()
asyncio.run(main())
