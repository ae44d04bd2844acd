#!/usr/bin/env python3
"""Lock-step keep-alive HTTP/1.1 client: C connections, each round one GET per connection,
then every response read in full. Usage: lockstep.py PORT CONNS REQUESTS [PATH]
Prints requests done, non-200 count, body-size mismatches."""
import socket, sys, time
port, conns, total = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
path = sys.argv[4] if len(sys.argv) > 4 else "/"
expect = int(sys.argv[5]) if len(sys.argv) > 5 else 44
req = f"GET {path} HTTP/1.1\r\nHost: upstream.test\r\nUser-Agent: lockstep\r\n\r\n".encode()
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(conns)]
for s in socks: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
bufs = [b""] * conns
def read_resp(i):
    s = socks[i]; b = bufs[i]
    while True:
        h = b.find(b"\r\n\r\n")
        if h >= 0:
            head = b[:h].decode("latin1"); lines = head.split("\r\n")
            status = int(lines[0].split()[1]); cl = 0
            for l in lines[1:]:
                k, _, v = l.partition(":")
                if k.strip().lower() == "content-length": cl = int(v)
            end = h + 4 + cl
            if len(b) >= end:
                bufs[i] = b[end:]; return status, cl, b[h+4:end]
        d = s.recv(65536)
        if not d: raise SystemExit(f"conn {i} closed")
        b += d
done = bad = badlen = 0; last = b""
t0 = time.time()
while done < total:
    k = min(conns, total - done)
    for i in range(k): socks[i].sendall(req)
    for i in range(k):
        st, cl, body = read_resp(i)
        if st != 200: bad += 1
        if cl != expect: badlen += 1
        last = body
    done += k
print(f"requests={done} non200={bad} badlen={badlen} secs={time.time()-t0:.1f}")
if path == "/debug": print(last.decode().strip())
for s in socks: s.close()
