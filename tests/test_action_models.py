"""Typed seams of the actions (issue 12): every action declares its parameters as a pydantic
``Params`` model (the JSON Schema playbooks are checked against is generated from it, and
``identifies`` is read off ``Identifies(...)`` on the fields), every containment action declares the
``State`` its ``read_state`` returns (checked on every read), and every action's docstring carries a
YAML example that parses and uses only the parameters the model declares."""

from __future__ import annotations

import re
import textwrap
from typing import Annotated, Any

import pytest
import yaml
from pydantic import BaseModel, Field

from cordon.action import (
    ActionContext,
    ApiCall,
    ContainmentAction,
    Identifies,
    NoParams,
    Params,
    State,
    all_actions,
    identifies_of,
    params_schema,
)
from tests.conftest import detection_from_event

ACTIONS = all_actions()


def test_there_are_actions_of_every_provider():
    assert {cls.provider for cls in ACTIONS.values()} >= {"aws", "azure", "gcp"}


@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_parameters_are_a_model_and_the_schema_is_generated_from_it(name):
    cls = ACTIONS[name]
    assert issubclass(cls.Params, BaseModel)
    assert cls.Params.model_config.get("extra") == "forbid", f"{name}: Params must refuse unknown parameters"
    if cls.Params is NoParams:
        assert not cls.schema.get("properties"), f"{name} has a hand-written schema but no Params model"
    assert cls.schema == params_schema(cls.Params)
    assert cls.identifies == identifies_of(cls.Params)
    assert cls.schema.get("additionalProperties") is False


@pytest.mark.parametrize("name", sorted(n for n, c in ACTIONS.items() if c.kind == "contain"))
def test_containment_actions_declare_their_state(name):
    cls = ACTIONS[name]
    assert cls.State is not None and issubclass(cls.State, BaseModel), f"{name} declares no State"
    assert cls.State.model_fields, f"{name}: State declares no field"
    assert cls.describe()["state_schema"]["properties"]


@pytest.mark.parametrize("name", sorted(n for n, c in ACTIONS.items() if c.kind == "contain"))
def test_containment_actions_name_the_credential_they_act_on(name):
    """A containment action that takes parameters has at least one field that must be the
    detection's own credential or principal (the guard's ``identifies`` check)."""
    cls = ACTIONS[name]
    if cls.schema.get("properties"):
        assert cls.identifies, f"{name}: no parameter is marked Identifies(...)"


def _examples(cls) -> list[dict[str, Any]]:
    doc = cls.__doc__ or ""
    blocks = re.findall(r"\.\. code-block:: yaml\n\n((?:[ \t]+.*\n|\n)+)", doc + "\n")
    return [yaml.safe_load(textwrap.dedent(b)) for b in blocks]


@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_docstring_example_parses_and_uses_declared_parameters(name):
    cls = ACTIONS[name]
    examples = _examples(cls)
    assert examples, f"{name}: no '.. code-block:: yaml' example in its docstring"
    steps = [step for ex in examples for section in ex.values() if isinstance(section, list)
             for step in section if isinstance(step, dict) and step.get("action") == name]
    assert steps, f"{name}: its example does not use the action"
    props = set(cls.schema.get("properties", {}))
    required = set(cls.schema.get("required", []))
    for step in steps:
        given = set(step.get("with") or {})
        assert given <= props, f"{name}: example passes undeclared {sorted(given - props)}"
        assert required <= given, f"{name}: example misses required {sorted(required - given)}"


# -- the machinery, on a small action of the test's own ----------------------------------------
class _KeyParams(Params):
    user: Annotated[str, Identifies("credential.owner.name"), Field(pattern=r"^[a-z]+$")]
    key: Annotated[str, Identifies("credential.uid")]
    note: str = "x"


class _KeyState(State):
    key: str
    status: str


class _FakeKey(ContainmentAction):
    """Test action.

    .. code-block:: yaml

        contain:
          - action: test.fake-key
            with: {user: "{{ credential.owner.name }}", key: "{{ credential.uid }}"}
    """

    name = "test.fake-key"
    provider = "aws"
    Params = _KeyParams
    State = _KeyState
    reads: list[Any] = []

    def target(self, ctx):
        return ctx.params["key"]

    def read_state(self, ctx):
        return self.reads.pop(0)

    def is_contained(self, state):
        return state is not None and state.get("status") == "off"

    def plan_calls(self, ctx, state):
        return [ApiCall(service="s", operation="Off", params={"key": ctx.params["key"]})]

    def call(self, ctx, api):
        return None


def _detection():
    """A CreateAccessKey detection (CloudTrail record shape) for key AKIA1 of user bob."""
    return detection_from_event({
        "eventVersion": "1.08", "eventSource": "iam.amazonaws.com", "eventName": "CreateAccessKey",
        "eventTime": "2024-01-01T00:00:00Z", "awsRegion": "us-east-1", "recipientAccountId": "111122223333",
        "userIdentity": {"type": "IAMUser", "arn": "arn:aws:iam::111122223333:user/eve", "userName": "eve",
                         "accountId": "111122223333", "accessKeyId": "AKIAEVE"},
        "requestParameters": {"userName": "bob"},
        "responseElements": {"accessKey": {"accessKeyId": "AKIA1", "userName": "bob", "status": "Active"}},
    })


def test_schema_and_identifies_come_from_the_annotations():
    assert _FakeKey.schema["required"] == ["user", "key"]
    assert _FakeKey.schema["properties"]["user"]["pattern"] == "^[a-z]+$"
    assert _FakeKey.schema["additionalProperties"] is False
    assert _FakeKey.identifies == {"user": ("credential.owner.name",), "key": ("credential.uid",)}
    det = _detection()
    assert _FakeKey.check_identifies({"user": "bob", "key": "AKIA1"}, det) is None
    assert "not the detection's" in _FakeKey.check_identifies({"user": "bob", "key": "AKIA2"}, det)


def test_a_state_of_another_shape_fails_the_run_and_the_declared_one_passes():
    ctx = ActionContext(detection=_detection(), params={"user": "bob", "key": "AKIA1"}, clients=lambda *a: None)
    _FakeKey.reads = [{"key": "AKIA1", "state": "on"}]  # "status" missing: not the declared State
    result = _FakeKey().run(ctx)
    assert result.status == "failed" and "ValidationError" in result.error and "status" in result.error
    _FakeKey.reads = [{"key": "AKIA1", "status": "on", "extra": 1}, {"key": "AKIA1", "status": "off"}]
    result = _FakeKey().run(ctx)
    assert result.status == "contained"
    assert result.before == {"key": "AKIA1", "status": "on", "extra": 1}  # extra keys kept as read


def test_the_test_action_example_parses():
    (example,) = _examples(_FakeKey)
    assert example["contain"][0]["with"]["key"] == "{{ credential.uid }}"
