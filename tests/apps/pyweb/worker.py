import os
import time

while True:
    print(f"{os.environ.get('BAE_UNIT')} working", flush=True)
    time.sleep(1)
