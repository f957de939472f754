"""Allocates (and touches) far more memory than an s1 unit may use."""
import time

chunks = []
for _ in range(64):
    chunks.append(bytearray(b"x" * (16 * 1024 * 1024)))
print("allocated 1 GB?!", flush=True)
time.sleep(600)
