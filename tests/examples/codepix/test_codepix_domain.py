"""CodePix domain rules, without any infrastructure."""

from __future__ import annotations

import uuid

import pytest
from examples.codepix.domain import (
    MAX_AMOUNT_CENTS,
    Account,
    Bank,
    CodePixError,
    IllegalTransitionError,
    InactivePixKeyError,
    InvalidAccountError,
    InvalidAmountError,
    InvalidBankError,
    InvalidInputError,
    InvalidPixKeyError,
    PixKey,
    PixKeyKind,
    PixKeyStatus,
    SameAccountError,
    Transaction,
    TransactionStatus,
    can_transition,
    cpf_check_digits,
    normalize_key,
)
from hypothesis import given
from hypothesis import strategies as st

BANK_A = Bank("001", "Banco A")
BANK_B = Bank("002", "Banco B")
ANN = Account(id="acc-ann", number="0001", owner_name="Ann", bank=BANK_A)
BOB = Account(id="acc-bob", number="0002", owner_name="Bob", bank=BANK_B)
BOB_KEY = PixKey(kind=PixKeyKind.EMAIL, key="bob@example.com", account=BOB)
VALID_CPF = "52998224725"  # check digits computed by hand: 2,5


def transfer(**overrides: object) -> Transaction:
    fields: dict[str, object] = {
        "id": "tx-1",
        "account_from": ANN,
        "amount_cents": 1990,
        "pix_key_to": BOB_KEY,
        "description": "lunch",
    }
    fields.update(overrides)
    return Transaction.register(**fields)  # type: ignore[arg-type]


# ------------------------------------------------------------------ keys


@pytest.mark.parametrize(
    ("kind", "key", "canonical"),
    [
        ("cpf", VALID_CPF, VALID_CPF),
        ("cpf", "529.982.247-25", VALID_CPF),
        ("email", "Maria.Silva+pix@Example.COM.br", "maria.silva+pix@example.com.br"),
        ("phone", "+5511987654321", "+5511987654321"),
        ("phone", "+551133334444", "+551133334444"),
        (
            "random",
            "0b5f5f8e-7a4c-4c1e-9d2b-3f6a1e2c4d5f",
            "0b5f5f8e-7a4c-4c1e-9d2b-3f6a1e2c4d5f",
        ),
        (
            "random",
            "0B5F5F8E-7A4C-4C1E-9D2B-3F6A1E2C4D5F",
            "0b5f5f8e-7a4c-4c1e-9d2b-3f6a1e2c4d5f",
        ),
    ],
)
def test_valid_keys_are_normalized(kind: str, key: str, canonical: str) -> None:
    assert normalize_key(kind, key) == (PixKeyKind(kind), canonical)


@pytest.mark.parametrize(
    ("kind", "key"),
    [
        ("cpf", "52998224724"),  # wrong second check digit
        ("cpf", "52998224715"),  # wrong first check digit
        ("cpf", "11111111111"),  # passes the arithmetic, refused by the rule
        ("cpf", "5299822472"),  # 10 digits
        ("cpf", "529.982.247.25"),  # wrong punctuation
        ("cpf", "52998224725 "),
        ("email", "no-at-sign.example.com"),
        ("email", "two@@example.com"),
        ("email", "ann@localhost"),  # no TLD
        ("email", "a" * 70 + "@example.com"),  # over the 77-character Pix limit
        ("email", "ann@-example.com"),
        ("phone", "11987654321"),  # no +55
        ("phone", "+14155550100"),  # not Brazil
        ("phone", "+5501987654321"),  # area code with a zero
        ("phone", "+55119876543210"),  # too long
        ("phone", "+5511887654321"),  # 9 digits not starting with 9
        ("random", "not-a-uuid"),
        ("random", "0b5f5f8e-7a4c-1c1e-9d2b-3f6a1e2c4d5f"),  # version 1
        ("random", "0b5f5f8e7a4c4c1e9d2b3f6a1e2c4d5f"),  # no hyphens
        ("iban", "DE89370400440532013000"),  # unknown kind
        ("cpf", ""),
    ],
)
def test_invalid_keys_raise_typed_errors(kind: str, key: str) -> None:
    with pytest.raises(InvalidPixKeyError):
        normalize_key(kind, key)


def test_non_string_key_is_invalid_not_a_crash() -> None:
    with pytest.raises(InvalidPixKeyError):
        normalize_key("cpf", 52998224725)


def test_pix_key_cannot_be_built_with_a_bad_key() -> None:
    with pytest.raises(InvalidPixKeyError, match="check digits"):
        PixKey(kind=PixKeyKind.CPF, key="52998224724", account=ANN)
    key = PixKey(kind=PixKeyKind.CPF, key="529.982.247-25", account=ANN)
    assert key.key == VALID_CPF
    assert key.is_active


@given(st.text(alphabet="0123456789", min_size=9, max_size=9))
def test_cpf_with_computed_check_digits_is_valid_and_any_other_pair_is_not(nine: str) -> None:
    digits = cpf_check_digits(nine)
    cpf = nine + digits
    if cpf == cpf[0] * 11:
        with pytest.raises(InvalidPixKeyError):
            normalize_key("cpf", cpf)
        return
    assert normalize_key("cpf", cpf)[1] == cpf
    for wrong in (
        f"{(int(digits[0]) + 1) % 10}{digits[1]}",
        f"{digits[0]}{(int(digits[1]) + 1) % 10}",
    ):
        with pytest.raises(InvalidPixKeyError):
            normalize_key("cpf", nine + wrong)


@given(st.uuids(version=4))
def test_every_uuid4_is_a_valid_random_key(value: uuid.UUID) -> None:
    assert normalize_key("random", str(value)) == (PixKeyKind.RANDOM, str(value))


@given(st.text(max_size=30))
def test_arbitrary_text_never_crashes_validation(text: str) -> None:
    for kind in PixKeyKind:
        try:
            normalize_key(kind, text)
        except InvalidPixKeyError:
            pass


# ------------------------------------------------------------------ banks and accounts


@pytest.mark.parametrize("code", ["1", "0001", "abc", "", "00a", 1, None])
def test_bank_codes_are_three_digits(code: object) -> None:
    with pytest.raises(InvalidBankError):
        Bank(code, "Banco")  # type: ignore[arg-type]


def test_bank_name_and_topic() -> None:
    with pytest.raises(InvalidBankError):
        Bank("001", "  ")
    assert Bank("042", "X").topic == "bank042"


def test_account_needs_id_number_owner_and_bank() -> None:
    with pytest.raises(InvalidAccountError):
        Account(id="", number="1", owner_name="Ann", bank=BANK_A)
    with pytest.raises(InvalidAccountError):
        Account(id="x", number="1", owner_name="Ann", bank="001")  # type: ignore[arg-type]


# ------------------------------------------------------------------ money


@pytest.mark.parametrize("amount", [19.90, 1.0, 100.0, float("nan"), True, "1990", None])
def test_money_is_never_a_float_or_anything_but_int(amount: object) -> None:
    with pytest.raises(InvalidAmountError, match="integer number of cents"):
        transfer(amount_cents=amount)


@pytest.mark.parametrize("amount", [0, -1, -1990, MAX_AMOUNT_CENTS + 1, 10**30])
def test_amount_must_be_positive_and_below_the_cap(amount: int) -> None:
    with pytest.raises(InvalidAmountError):
        transfer(amount_cents=amount)


def test_amount_at_the_edges_is_accepted() -> None:
    assert transfer(amount_cents=1).amount_cents == 1
    assert transfer(amount_cents=MAX_AMOUNT_CENTS).amount_cents == MAX_AMOUNT_CENTS


# ------------------------------------------------------------------ transfer rules


def test_transfer_to_own_account_is_refused() -> None:
    own_key = PixKey(kind=PixKeyKind.CPF, key=VALID_CPF, account=ANN)
    with pytest.raises(SameAccountError):
        transfer(pix_key_to=own_key)


def test_transfer_to_inactive_key_is_refused() -> None:
    inactive = PixKey(
        kind=PixKeyKind.EMAIL, key="bob@example.com", account=BOB, status=PixKeyStatus.INACTIVE
    )
    with pytest.raises(InactivePixKeyError):
        transfer(pix_key_to=inactive)


@pytest.mark.parametrize("bad_id", ["", "   ", "x" * 65, None])
def test_transaction_id_is_required(bad_id: object) -> None:
    with pytest.raises(InvalidInputError):
        transfer(id=bad_id)


def test_description_is_bounded() -> None:
    with pytest.raises(InvalidInputError):
        transfer(description="x" * 141)


def test_happy_life_cycle() -> None:
    tx = transfer()
    assert tx.status is TransactionStatus.PENDING
    confirmed = tx.confirm()
    assert confirmed.status is TransactionStatus.CONFIRMED
    assert tx.status is TransactionStatus.PENDING  # immutable: transitions return copies
    assert confirmed.complete().status is TransactionStatus.COMPLETED


def test_error_keeps_the_reason_and_is_terminal() -> None:
    failed = transfer().fail("destination bank closed the account")
    assert failed.status is TransactionStatus.ERROR
    assert failed.error_reason == "destination bank closed the account"
    with pytest.raises(IllegalTransitionError):
        failed.confirm()
    with pytest.raises(InvalidInputError):
        transfer().fail("")


@pytest.mark.parametrize(
    ("path", "bad_step"),
    [
        ((), "complete"),  # pending -> completed skips confirmation
        (("confirm",), "confirm"),
        (("confirm", "complete"), "confirm"),
        (("confirm", "complete"), "complete"),
    ],
)
def test_illegal_transitions_raise(path: tuple[str, ...], bad_step: str) -> None:
    tx = transfer()
    for step in path:
        tx = getattr(tx, step)()
    with pytest.raises(IllegalTransitionError):
        getattr(tx, bad_step)()


STEPS = {
    "confirm": TransactionStatus.CONFIRMED,
    "complete": TransactionStatus.COMPLETED,
    "fail": TransactionStatus.ERROR,
}


@given(st.lists(st.sampled_from(sorted(STEPS)), max_size=6))
def test_any_sequence_of_steps_follows_the_transition_table(steps: list[str]) -> None:
    tx = transfer()
    for step in steps:
        allowed = can_transition(tx.status, STEPS[step])
        try:
            tx = tx.fail("no") if step == "fail" else getattr(tx, step)()
        except IllegalTransitionError:
            assert not allowed
        else:
            assert allowed
            assert tx.status is STEPS[step]
    # terminal states stay terminal
    if tx.status in {TransactionStatus.COMPLETED, TransactionStatus.ERROR}:
        assert not any(can_transition(tx.status, s) for s in TransactionStatus)


def test_every_domain_error_is_a_codepix_error() -> None:
    for error in (InvalidAmountError, InvalidPixKeyError, SameAccountError, IllegalTransitionError):
        assert issubclass(error, CodePixError)
