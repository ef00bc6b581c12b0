"""The message catalogue matches the wiring and every message of a real run."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from examples._catalogue import EventSpec, render_catalogue
from examples.codepix.adapters.messaging import TOPICS
from examples.codepix.application import OpenAccount, RegisterPixKey
from examples.codepix.bank.domain import KNOWN_BANKS
from examples.codepix.catalogue import BANK_TOPIC, CODEPIX, catalogue
from examples.codepix.demo import FINAL, EmbeddedNetwork, wait_until
from pydantic import TypeAdapter, ValidationError

pytestmark = pytest.mark.integration  # loopback gRPC server

DOC = Path(__file__).resolve().parents[3] / "docs" / "examples" / "codepix.md"


def spec_for(topic: str, message_type: str) -> EventSpec:
    generic = re.sub(r"^bank[0-9]{3}$", BANK_TOPIC, topic)
    matches = [e for e in catalogue() if (e.topic, e.type) == (generic, message_type)]
    assert len(matches) == 1, f"{message_type} on {topic} is not in the catalogue"
    return matches[0]


def _undeclared(schema: dict[str, Any], defs: dict[str, Any], payload: Any) -> list[str]:
    if "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[-1]]
    properties = schema.get("properties")
    if properties is None or not isinstance(payload, dict):
        return []
    extra = [name for name in payload if name not in properties]
    for name, value in payload.items():
        if name in properties:
            extra += [f"{name}.{e}" for e in _undeclared(properties[name], defs, value)]
    return extra


def check_payload(spec: EventSpec, payload: Any) -> None:
    """Strict: right types, every required field, and no field the catalogue does not list."""
    TypeAdapter(spec.payload).validate_python(payload, strict=True)
    schema = spec.json_schema()
    extra = _undeclared(schema, schema.get("$defs", {}), payload)
    if extra:
        raise AssertionError(f"{spec.type} on {spec.topic} carries undeclared fields {extra}")


def test_catalogue_agrees_with_what_the_services_consume() -> None:
    events = catalogue()
    to_codepix = {e.topic for e in events if CODEPIX in e.consumers}
    assert to_codepix == set(TOPICS)
    assert {e.producer for e in events if e.topic == BANK_TOPIC} == {CODEPIX}
    assert len({(e.topic, e.type) for e in events}) == len(events)
    rendered = render_catalogue(events)
    assert rendered.count("| [`transaction.") == len(events)
    assert "<!-- message-catalogue: examples.codepix.catalogue -->" in DOC.read_text()


def test_check_payload_refuses_what_the_contract_does_not_allow() -> None:
    request = spec_for("transactions", "transaction.requested")
    good = {
        "id": "t",
        "account_id": "a",
        "amount_cents": 5,
        "pix_key_kind": "random",
        "pix_key": "k",
        "description": "",
    }
    check_payload(request, good)
    for bad in ({**good, "amount_cents": 5.0}, {**good, "amount_cents": "5"}, {"id": "t"}):
        with pytest.raises(ValidationError):
            check_payload(request, bad)
    with pytest.raises(AssertionError, match="undeclared fields"):
        check_payload(request, {**good, "extra": 1})
    forwarded = spec_for("bank002", "transaction.requested")
    nested = {
        "id": "t",
        "status": "pending",
        "amount_cents": 1,
        "description": "",
        "from": {"bank_code": "001", "account_id": "a", "account_number": "1", "owner_name": "A"},
        "to": {"bank_code": "002", "account_id": "b", "pix_key_kind": "random", "pix_key": "k"},
    }
    check_payload(forwarded, nested)
    with pytest.raises(AssertionError, match=r"from\.cpf"):
        check_payload(forwarded, {**nested, "from": {**nested["from"], "cpf": "1"}})


def test_every_message_of_a_run_is_in_the_catalogue(tmp_path: Path) -> None:
    net = EmbeddedNetwork(tmp_path, (KNOWN_BANKS["001"], KNOWN_BANKS["002"]))
    try:
        bbx, ctd = net.banks["001"], net.banks["002"]
        ann, bob = bbx.open_account("Ann", 1_000), ctd.open_account("Bob", 0)
        key, ghost_key = str(uuid.uuid4()), str(uuid.uuid4())
        ctd.register_key(bob.id, "random", key)
        # a key CodePix routes to CTD for an account CTD's database does not have
        OpenAccount(net.codepix_uow)(
            bank_code="002", account_id="002-ghost", number="1", owner_name="Ghost"
        )
        RegisterPixKey(net.codepix_uow)("random", ghost_key, "002-ghost")
        sent = [
            bbx.send(account_id=ann.id, pix_key_kind="random", pix_key=k, amount_cents=100)
            for k in (key, str(uuid.uuid4()), ghost_key)  # completes, refused by each side
        ]
        for s in sent:
            wait_until(lambda s=s: bbx.queries.transfer(s.transfer.id)[0].status in FINAL)
        wait_until(lambda: str(ctd.queries.transfer(sent[0].transfer.id)[0].status) == "completed")
        seen = set()
        for topic in (*TOPICS, "bank001", "bank002"):
            for message in net.broker.messages(topic):
                spec = spec_for(topic, message.type)
                check_payload(spec, message.payload)
                seen.add((spec.topic, spec.type))
        assert seen == {(e.topic, e.type) for e in catalogue()}  # the run used every event
    finally:
        net.close()
