"""A stand-in for systemd's notification socket: binds an AF_UNIX datagram socket (a path, or an
abstract address when the argument starts with '@'), prints "listening", then prints each datagram
received as one JSON string per line until it has received the number asked for."""
import json
import socket
import sys

address, count = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("\0" + address[1:] if address.startswith("@") else address)
print("listening", flush=True)
for _ in range(count):
    data = s.recv(4096)
    print(json.dumps(data.decode("utf-8")), flush=True)
