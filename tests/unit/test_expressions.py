"""The expression builder: every name and value a placeholder, conditions ANDed."""

from __future__ import annotations

from pyanamo.expressions import Expression
from pyanamo.gateway import is_state, lease_expired, lease_is, not_held
from pyanamo.schema import ItemState


def test_names_and_values_are_placeholders_and_names_are_shared():
    expr = Expression().set(("TaskScript", "Task_0", "Status"), "done").set("lockID", "x; DROP").remove("Lease_Token")
    expr.add("Claims", 1)
    request = expr.request()
    assert request["UpdateExpression"] == "SET #n0.#n1.#n2 = :v0, #n3 = :v1 REMOVE #n4 ADD #n5 :v2"
    assert request["ExpressionAttributeNames"] == {"#n0": "TaskScript", "#n1": "Task_0", "#n2": "Status",
                                                  "#n3": "lockID", "#n4": "Lease_Token", "#n5": "Claims"}
    assert request["ExpressionAttributeValues"][":v1"] == {"S": "x; DROP"}


def test_named_conditions_are_anded_and_reuse_names():
    expr = lease_is(is_state(Expression(), ItemState.TODO), "tok")
    request = expr.request()
    assert request["ConditionExpression"] == "(#n0 = :v0) AND (#n1 = :v1)"
    assert request["ExpressionAttributeNames"] == {"#n0": "lockID", "#n1": "Lease_Token"}
    assert "UpdateExpression" not in request


def test_lease_conditions_read_as_their_rule():
    assert lease_is(Expression(), None).request()["ConditionExpression"] == "(attribute_not_exists(#n0))"
    expired = lease_expired(Expression(), 12.3456).request()
    assert expired["ConditionExpression"] == "(#n0 = :v0 AND #n1 < :v1)"
    assert expired["ExpressionAttributeValues"] == {":v0": {"S": "locked"}, ":v1": {"N": "12.346"}}
    held = not_held(Expression(), 1.0).request()["ConditionExpression"]
    assert held == "(attribute_not_exists(#n0) OR #n1 <> :v0 OR #n2 < :v1)"


def test_set_from_copies_the_old_value_with_a_default():
    request = Expression().set_from("Last_Holder", "InstanceID", "unknown").request()
    assert request["UpdateExpression"] == "SET #n0 = if_not_exists(#n1, :v0)"
