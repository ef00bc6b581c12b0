"""The bank's HTTP adapter: server-rendered pages for people, a JSON API for programs.

Both call the same use cases. Errors become RFC 9457 problem bodies on the
API (``application/problem+json``) and a message on the page for forms:

=====================================  ======
error                                   status
=====================================  ======
bad input (key format, amount, body)    422
Pix key already owned (CodePix says)    422
bank code CodePix has not admitted      422
insufficient funds                      422
unknown account / transfer              404
transfer id reused with other details   409
CodePix unreachable                     503 (with ``Retry-After``)
=====================================  ======
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final
from urllib.parse import quote

from fastapi import FastAPI, Form, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.exceptions import HTTPException

from examples.codepix.bank.domain import (
    InsufficientFundsError,
    Transfer,
    format_reais,
    new_transfer_id,
    parse_reais,
)
from examples.codepix.bank.ports import (
    AccountView,
    BankNotAdmittedError,
    CodePixUnavailableError,
)
from examples.codepix.domain import (
    AlreadyExistsError,
    CodePixError,
    InvalidInputError,
    NotFoundError,
    PixKeyAlreadyExistsError,
    RuleViolationError,
)
from resilience.tracing import TraceContextMiddleware

if TYPE_CHECKING:
    from examples.codepix.bank.service import BankNode

PROBLEM: Final = "application/problem+json"
TEMPLATES: Final = Jinja2Templates(directory=Path(__file__).with_name("templates"))
TEMPLATES.env.filters["reais"] = format_reais


def status_for(exc: Exception) -> int:
    """The HTTP status of an error the use cases raise (see the module table)."""
    if isinstance(exc, CodePixUnavailableError):
        return 503
    if isinstance(exc, InvalidInputError | PixKeyAlreadyExistsError | BankNotAdmittedError):
        return 422
    if isinstance(exc, InsufficientFundsError):
        return 422
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, AlreadyExistsError | RuleViolationError):
        return 409
    return 500


_EXPECTED: Final = (CodePixError, CodePixUnavailableError, BankNotAdmittedError)


def problem(status: int, title: str, detail: str = "", **extra: Any) -> JSONResponse:
    """An RFC 9457 problem response."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    headers = {"Retry-After": "2"} if status == 503 else None
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


class NewAccount(BaseModel):
    """``POST /api/accounts``."""

    model_config = ConfigDict(extra="forbid")
    owner_name: str
    deposit_cents: StrictInt = 0
    id: str | None = Field(default=None, max_length=64)


class NewKey(BaseModel):
    """``POST /api/accounts/{id}/keys``."""

    model_config = ConfigDict(extra="forbid")
    kind: str
    key: str


class NewTransfer(BaseModel):
    """``POST /api/transfers``: *id* makes retries safe (same id, same transfer)."""

    model_config = ConfigDict(extra="forbid")
    account_id: str
    pix_key_kind: str
    pix_key: str
    amount_cents: StrictInt  # integer cents; 12.5 is refused, never rounded
    description: str = ""
    id: str | None = None


def _account_json(account: AccountView) -> dict[str, Any]:
    return {
        "id": account.id,
        "number": account.number,
        "owner_name": account.owner_name,
        "balance_cents": account.balance_cents,
    }


def _transfer_json(transfer: Transfer) -> dict[str, Any]:
    return {
        "id": transfer.id,
        "direction": str(transfer.direction),
        "account_id": transfer.account_id,
        "amount_cents": transfer.amount_cents,
        "pix_key_kind": str(transfer.pix_key_kind),
        "pix_key": transfer.pix_key,
        "counterparty": transfer.counterparty,
        "description": transfer.description,
        "status": str(transfer.status),
        "reason": transfer.reason,
    }


def build_app(bank: BankNode) -> FastAPI:
    """The FastAPI app of *bank*: HTML pages under ``/``, JSON under ``/api``."""
    profile = bank.profile
    app = FastAPI(title=f"{profile.name} ({profile.code})", docs_url=None, redoc_url=None)
    app.add_middleware(TraceContextMiddleware)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        return problem(422, "Invalid request", "The body or parameters are invalid.", errors=errors)

    @app.exception_handler(HTTPException)
    async def _http(_request: Request, exc: HTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail))

    for kind in _EXPECTED:

        @app.exception_handler(kind)
        async def _domain(_request: Request, exc: Exception) -> JSONResponse:
            return problem(status_for(exc), type(exc).__name__, str(exc))

    def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        return TEMPLATES.TemplateResponse(
            request, name, {"bank": profile, **context}, status_code=status
        )

    # ------------------------------------------------------------------ JSON API

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "bank": profile.code}

    @app.get("/api/accounts")
    def list_accounts() -> list[dict[str, Any]]:
        return [_account_json(a) for a in bank.queries.accounts()]

    @app.post("/api/accounts", status_code=201)
    def open_account(body: NewAccount) -> dict[str, Any]:
        return _account_json(
            bank.open_account(body.owner_name, body.deposit_cents, account_id=body.id)
        )

    @app.get("/api/accounts/{account_id}")
    def get_account(account_id: str) -> dict[str, Any]:
        view = bank.queries.account(account_id)
        return {
            **_account_json(view.account),
            "keys": [{"kind": k, "key": v} for k, v in view.keys],
            "entries": [
                {
                    "kind": str(e.kind),
                    "amount_cents": e.amount_cents,
                    "transfer_id": e.transfer_id,
                    "at": e.at.isoformat(),
                }
                for e in view.entries
            ],
            "transfers": [_transfer_json(t) for t in view.transfers],
        }

    @app.post("/api/accounts/{account_id}/keys", status_code=201)
    def register_key(account_id: str, body: NewKey) -> dict[str, str]:
        key = bank.register_key(account_id, body.kind, body.key)
        return {"account_id": account_id, "kind": body.kind, "key": key}

    @app.post("/api/transfers", status_code=201)
    def send(body: NewTransfer, response: Response) -> dict[str, Any]:
        sent = bank.send(
            account_id=body.account_id,
            pix_key_kind=body.pix_key_kind,
            pix_key=body.pix_key,
            amount_cents=body.amount_cents,
            description=body.description,
            transfer_id=body.id,
        )
        if not sent.created:
            response.status_code = 200  # a retry: the transfer exists, nothing was debited again
        return _transfer_json(sent.transfer)

    @app.get("/api/transfers/{transfer_id}")
    def get_transfer(transfer_id: str) -> dict[str, Any]:
        transfer, steps = bank.queries.transfer(transfer_id)
        return {
            **_transfer_json(transfer),
            "history": [
                {"direction": str(s.direction), "status": str(s.status), "at": s.at.isoformat()}
                for s in steps
            ],
        }

    # ------------------------------------------------------------------ pages

    @app.get("/", response_class=HTMLResponse)
    def accounts_page(request: Request, notice: str = "", error: str = "") -> HTMLResponse:
        return page(
            request, "accounts.html", accounts=bank.queries.accounts(), notice=notice, error=error
        )

    @app.post("/accounts", response_class=HTMLResponse)
    def open_account_form(
        request: Request,
        owner_name: Annotated[str, Form()],
        deposit: Annotated[str, Form()] = "0",
    ) -> Response:
        try:
            cents = 0 if deposit.strip() in {"", "0"} else parse_reais(deposit)
            account = bank.open_account(owner_name, cents)
        except _EXPECTED as exc:
            return page(
                request,
                "accounts.html",
                status_for(exc),
                accounts=bank.queries.accounts(),
                error=str(exc),
            )
        return _see(f"/accounts/{account.id}", f"Account {account.number} opened")

    def account_page(request: Request, account_id: str, status: int = 200, **extra: Any) -> Any:
        return page(
            request,
            "account.html",
            status,
            view=bank.queries.account(account_id),
            new_transfer_id=new_transfer_id(),  # a double submit is one transfer
            **extra,
        )

    @app.get("/accounts/{account_id}", response_class=HTMLResponse)
    def account_view(request: Request, account_id: str, notice: str = "") -> HTMLResponse:
        return account_page(request, account_id, notice=notice)  # type: ignore[no-any-return]

    @app.post("/accounts/{account_id}/keys", response_class=HTMLResponse)
    def register_key_form(
        request: Request,
        account_id: str,
        kind: Annotated[str, Form()],
        key: Annotated[str, Form()],
    ) -> Response:
        try:
            canonical = bank.register_key(account_id, kind, key.strip())
        except _EXPECTED as exc:
            return account_page(request, account_id, status_for(exc), error=str(exc))  # type: ignore[no-any-return]
        return _see(f"/accounts/{account_id}", f"Key {kind} {canonical} registered")

    @app.post("/accounts/{account_id}/transfers", response_class=HTMLResponse)
    def send_form(
        request: Request,
        account_id: str,
        *,
        pix_key_kind: Annotated[str, Form()],
        pix_key: Annotated[str, Form()],
        amount: Annotated[str, Form()],
        description: Annotated[str, Form()] = "",
        transfer_id: Annotated[str, Form()] = "",
    ) -> Response:
        try:
            sent = bank.send(
                account_id=account_id,
                pix_key_kind=pix_key_kind,
                pix_key=pix_key.strip(),
                amount_cents=parse_reais(amount),
                description=description,
                transfer_id=transfer_id or None,
            )
        except _EXPECTED as exc:
            return account_page(request, account_id, status_for(exc), error=str(exc))  # type: ignore[no-any-return]
        return _see(f"/accounts/{account_id}", f"Transfer {sent.transfer.id} sent")

    return app


def _see(path: str, notice: str) -> RedirectResponse:
    """Post/redirect/get: a reload of the result page never submits the form again."""
    return RedirectResponse(f"{path}?notice={quote(notice)}", status_code=303)
