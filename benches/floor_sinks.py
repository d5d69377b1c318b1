"""Receivers for rtp_floor (benches/load.sh, benches/nic.sh): N UDP sockets bound on a run of
free ports of 127.0.0.1, never read. Writes the first port to READY once bound, then waits to be
killed. Usage: python3 benches/floor_sinks.py N READY

Each socket's receive buffer holds a whole run (SO_RCVBUFFORCE, 4 MiB: 60 s of 50 packets/s),
so the kernel queues every packet, as it does for mohd's receiver, which reads them all. With
the default buffer (about 200 packets) a sink is full after 4 s and the kernel drops the rest
(344,000 of 500,000 packets at 1,000 streams over 10 s). Measured, that did not change the
floor (1,493 ns/packet dropping, 1,490 queueing, same session), but now the two senders'
packets take the same path."""
import socket, sys, time

n, ready = int(sys.argv[1]), sys.argv[2]
SO_RCVBUFFORCE = 33  # Linux; needs CAP_NET_ADMIN, else SO_RCVBUF up to net.core.rmem_max
RCVBUF = 4 << 20
for base in range(20000, 65536 - n, 1009):
    socks = []
    try:
        for k in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(s)
            try:
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
            except OSError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            s.bind(("127.0.0.1", base + k))
    except OSError:
        for s in socks:
            s.close()
        continue
    open(ready, "w").write(str(base))
    time.sleep(3600)
sys.exit("no run of free ports")
