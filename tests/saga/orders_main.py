"""The Orders service of docs/sagas/order_saga.py as a process, for tests that SIGKILL it.

``python orders_main.py URL place TIMEOUT`` places ``order-1`` with a deadline
and runs the timer scheduler; ``python orders_main.py URL serve`` only runs the
scheduler. Both print ``up`` once running, then serve until killed.
"""

from __future__ import annotations

import runpy
import sys
import time
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[2] / "docs" / "sagas" / "order_saga.py"


def main(url: str, mode: str, timeout: str = "0") -> None:
    sample = runpy.run_path(str(SAMPLE), run_name="order_saga")
    from resilience.saga import SagaTimerScheduler

    orders = sample["orders_service"](url)  # database clock
    if mode == "place":
        sample["place_orders"](orders, [("order-1", 1, 10)], timeout=float(timeout))
    SagaTimerScheduler(orders.participant, interval=0.05).start()
    print("up", flush=True)
    time.sleep(120)


if __name__ == "__main__":
    main(*sys.argv[1:])
