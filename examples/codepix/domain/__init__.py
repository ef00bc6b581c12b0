"""CodePix's rules, free of I/O: banks, accounts, Pix keys, transfers and their errors.

Everything here can be unit-tested without a database or a broker; adapters
only ever see the typed errors of `errors`.
"""

from .bank import Account, Bank, validate_bank_code
from .errors import (
    AccountAlreadyExistsError,
    AccountNotFoundError,
    AlreadyExistsError,
    BankAlreadyExistsError,
    BankNotFoundError,
    CodePixError,
    IllegalTransitionError,
    InactivePixKeyError,
    InvalidAccountError,
    InvalidAmountError,
    InvalidBankError,
    InvalidInputError,
    InvalidPixKeyError,
    NotFoundError,
    PixKeyAlreadyExistsError,
    PixKeyNotFoundError,
    RuleViolationError,
    SameAccountError,
    TransactionNotFoundError,
)
from .pix_key import PixKey, PixKeyKind, PixKeyStatus, cpf_check_digits, normalize_key, parse_kind
from .transaction import (
    MAX_AMOUNT_CENTS,
    Transaction,
    TransactionStatus,
    can_transition,
    validate_amount,
    validate_transaction_id,
)

__all__ = [
    "MAX_AMOUNT_CENTS",
    "Account",
    "AccountAlreadyExistsError",
    "AccountNotFoundError",
    "AlreadyExistsError",
    "Bank",
    "BankAlreadyExistsError",
    "BankNotFoundError",
    "CodePixError",
    "IllegalTransitionError",
    "InactivePixKeyError",
    "InvalidAccountError",
    "InvalidAmountError",
    "InvalidBankError",
    "InvalidInputError",
    "InvalidPixKeyError",
    "NotFoundError",
    "PixKey",
    "PixKeyAlreadyExistsError",
    "PixKeyKind",
    "PixKeyNotFoundError",
    "PixKeyStatus",
    "RuleViolationError",
    "SameAccountError",
    "Transaction",
    "TransactionNotFoundError",
    "TransactionStatus",
    "can_transition",
    "cpf_check_digits",
    "normalize_key",
    "parse_kind",
    "validate_amount",
    "validate_bank_code",
    "validate_transaction_id",
]
