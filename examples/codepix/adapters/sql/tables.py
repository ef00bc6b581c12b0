"""The schema: banks, accounts, pix keys, transactions, plus the toolkit's outbox and inbox.

They share one `MetaData` so ``create_all`` makes everything a unit of work
touches, and one database, so a state change and its message commit together.
"""

from __future__ import annotations

import sqlalchemy as sa

from resilience.outbox import inbox_table, outbox_table

metadata = sa.MetaData()

banks = sa.Table(
    "codepix_banks",
    metadata,
    sa.Column("code", sa.String(3), primary_key=True),
    sa.Column("name", sa.String(120), nullable=False),
)

accounts = sa.Table(
    "codepix_accounts",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("number", sa.String(32), nullable=False),
    sa.Column("owner_name", sa.String(120), nullable=False),
    sa.Column("bank_code", sa.String(3), sa.ForeignKey("codepix_banks.code"), nullable=False),
)

pix_keys = sa.Table(
    "codepix_pix_keys",
    metadata,
    sa.Column("kind", sa.String(10), primary_key=True),
    sa.Column("key", sa.String(80), primary_key=True),  # the primary key is what makes a key unique
    sa.Column("account_id", sa.String(64), sa.ForeignKey("codepix_accounts.id"), nullable=False),
    sa.Column("status", sa.String(10), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

transactions = sa.Table(
    "codepix_transactions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column(
        "account_from_id", sa.String(64), sa.ForeignKey("codepix_accounts.id"), nullable=False
    ),
    sa.Column("amount_cents", sa.BigInteger, nullable=False),  # integer cents, never a float
    sa.Column("pix_key_kind", sa.String(10), nullable=False),
    sa.Column("pix_key", sa.String(80), nullable=False),
    sa.Column("description", sa.String(140), nullable=False),
    sa.Column("status", sa.String(10), nullable=False),
    sa.Column("error_reason", sa.String(500)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(
        ["pix_key_kind", "pix_key"], ["codepix_pix_keys.kind", "codepix_pix_keys.key"]
    ),
    sa.CheckConstraint("amount_cents > 0", name="codepix_amount_positive"),
)

outbox = outbox_table(metadata, "codepix_outbox")
inbox = inbox_table(metadata, "codepix_inbox")
