"""The domain's errors: a small tree, so adapters can map each branch to one response.

    CodePixError
    ├── InvalidInputError          bad data: a retry cannot fix it (gRPC INVALID_ARGUMENT)
    │   ├── InvalidPixKeyError
    │   ├── InvalidAmountError
    │   ├── InvalidBankError
    │   └── InvalidAccountError
    ├── NotFoundError              (gRPC NOT_FOUND)
    │   ├── BankNotFoundError
    │   ├── AccountNotFoundError
    │   ├── PixKeyNotFoundError
    │   └── TransactionNotFoundError
    ├── AlreadyExistsError         (gRPC ALREADY_EXISTS)
    │   ├── BankAlreadyExistsError
    │   ├── AccountAlreadyExistsError
    │   └── PixKeyAlreadyExistsError
    └── RuleViolationError         a valid request the rules refuse (gRPC FAILED_PRECONDITION)
        ├── SameAccountError
        ├── InactivePixKeyError
        └── IllegalTransitionError

The domain depends on nothing but the standard library, so these derive from
`Exception`, not from the toolkit's `ResilienceError`.
"""

from __future__ import annotations


class CodePixError(Exception):
    """Base of every rule the domain enforces; adapters catch this, never bare Exception."""


class InvalidInputError(CodePixError, ValueError):
    """The input is malformed; sending it again will fail again."""


class InvalidPixKeyError(InvalidInputError):
    """A key that does not match its kind's format (CPF check digits, e-mail, E.164, UUID v4)."""


class InvalidAmountError(InvalidInputError):
    """An amount that is not a positive integer number of cents below the cap."""


class InvalidBankError(InvalidInputError):
    """A bank code that is not three digits, or an empty name."""


class InvalidAccountError(InvalidInputError):
    """An account with a missing id, number or owner."""


class NotFoundError(CodePixError, LookupError):
    """The thing referred to does not exist."""


class BankNotFoundError(NotFoundError):
    """No bank with this code is registered."""


class AccountNotFoundError(NotFoundError):
    """No account with this id is registered."""


class PixKeyNotFoundError(NotFoundError):
    """No key of this kind and value is registered."""


class TransactionNotFoundError(NotFoundError):
    """No transaction with this id is known."""


class AlreadyExistsError(CodePixError):
    """A unique thing was registered twice."""


class BankAlreadyExistsError(AlreadyExistsError):
    """A bank with this code exists."""


class AccountAlreadyExistsError(AlreadyExistsError):
    """An account with this id exists."""


class PixKeyAlreadyExistsError(AlreadyExistsError):
    """The key is owned by an account already (maybe at another bank)."""


class RuleViolationError(CodePixError):
    """A well-formed request that the business rules refuse."""


class SameAccountError(RuleViolationError):
    """A transfer whose destination key belongs to the origin account."""


class InactivePixKeyError(RuleViolationError):
    """The key exists but was deactivated: it receives no transfers, nor a second deactivation."""


class IllegalTransitionError(RuleViolationError):
    """A status change the transaction life cycle does not allow (e.g. completed -> pending)."""
