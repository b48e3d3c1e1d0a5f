"""Never ends on its own: the service stops it and answers with "timed_out": true.

Send it with a short limit: curl --data-binary @example/too_slow.py \
    'localhost:8080/execute?language=python&timeout=2'
"""

import itertools
import time

for tick in itertools.count():
    print("tick", tick, flush=True)
    time.sleep(0.5)
