"""Receivers for rtp_floor (benches/load.sh, benches/nic.sh): N UDP sockets bound on a run of
free ports of 127.0.0.1, never read. Writes the first port to READY once bound, then waits to be
killed. Usage: python3 benches/floor_sinks.py N READY"""
import socket, sys, time

n, ready = int(sys.argv[1]), sys.argv[2]
for base in range(20000, 65536 - n, 1009):
    socks = []
    try:
        for k in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(s)
            s.bind(("127.0.0.1", base + k))
    except OSError:
        for s in socks:
            s.close()
        continue
    open(ready, "w").write(str(base))
    time.sleep(3600)
sys.exit("no run of free ports")
