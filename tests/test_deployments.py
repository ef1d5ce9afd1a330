"""``cordon.deployments.create_deployment_run`` against Prefect's test server: it keeps one client
and the deployment's ID per process, so what a stale cache could break is what is tested here: a
deployment deleted and created again under the same name (a new ID), and the idempotency key."""

from __future__ import annotations

from prefect import flow

from cordon import deployments


@flow(name="deployments-probe")
def probe(n: int = 0) -> int:
    return n


def _deploy(client) -> str:
    """Register ``deployments-probe/probe`` (no work pool: the runs are only created, never run)
    and return its ID."""
    flow_id = client.create_flow(probe)
    return str(client.create_deployment(flow_id=flow_id, name="probe"))


def test_runs_follow_a_deployment_created_again_under_the_same_name(prefect_server):
    from prefect.client.orchestration import get_client

    deployments.forget()
    with get_client(sync_client=True) as client:
        first = _deploy(client)
        a = deployments.create_deployment_run("deployments-probe/probe", parameters={"n": 1}, idempotency_key="k-a",
                                              tags=["case:a"])
        assert str(a.deployment_id) == first and a.parameters == {"n": 1} and "case:a" in a.tags
        assert a.state.is_scheduled()
        # the same key gives the same run (Prefect's idempotency), not a second one
        again = deployments.create_deployment_run("deployments-probe/probe", parameters={"n": 1},
                                                  idempotency_key="k-a")
        assert again.id == a.id
        client.delete_deployment(first)
        second = _deploy(client)
        assert second != first
        # the cached ID is gone on the server: the call looks the name up again and succeeds
        b = deployments.create_deployment_run("deployments-probe/probe", parameters={"n": 2}, idempotency_key="k-b")
        assert str(b.deployment_id) == second
        assert str(client.read_flow_run(b.id).deployment_id) == second


def test_an_unknown_deployment_raises_object_not_found(prefect_server):
    import pytest
    from prefect.exceptions import ObjectNotFound

    deployments.forget()
    with pytest.raises(ObjectNotFound):
        deployments.create_deployment_run("deployments-probe/nowhere", parameters={}, idempotency_key="k-x")
