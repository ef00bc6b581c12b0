"""Stock: reserves the items of a new order, releases them when the order is cancelled.

All or nothing per order: either every line is reserved (``stock.reserved``) or
none is (``stock.unavailable``). Reservation rows make the release exact and
idempotent: a cancelled order gives back what *it* took, once.
"""

from .service import StockService

__all__ = ["StockService"]
