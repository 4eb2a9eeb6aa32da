"""A RabbitMQ cluster with quorum queues losing the node that leads them, mid-run.

The run uses a 3-node cluster of its own (``rabbit_cluster``, ``tests.services``) and the
shared Redis. Workers, the producer and the reply consumer are given the three nodes'
URLs (``AMQP_URL`` with ``;``) and connect to the first: the quorum queues are declared
there, so that node leads them. Once 30 % of the results are in, that node is killed with
SIGKILL; the producer publishes the second half of the requests after the kill. The two
other nodes elect new leaders, every client reconnects to the next URL, the delayed polls
the workers held are handed back, and every request must still end with exactly one
result, none POSTed twice. ``time without service`` is from the kill to the result of a
probe request published right after it (through the surviving nodes).
The node is started again afterwards (it rejoins the cluster) for the next test.

First, the engine itself: three running nodes in one cluster, a quorum queue declared on
it has a member on each and a leader ``leader_of`` names; with ``--chaos-engines``, killing
the leader makes the queue elect another, and the killed node rejoins when started again.
Every wait is a condition with a deadline, never a sleep.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Iterator

import pika
import pika.exceptions

from producers.consumer import ResultConsumer
from producers.topology import QueueType
from simulator.testing import RunningSimulator, wait_until
from tests.chaos.conftest import ChaosSize, StackFactory
from tests.chaos.harness import (
    Progress,
    check_guarantees,
    check_hostile,
    prepare_simulator,
    run_chaos,
    wait_for,
)
from tests.services import PrivateRabbitCluster, RabbitClusterNode

WORKERS = 2
#: Generous deadlines: the machine may be busy with other tests.
QUEUE_TIMEOUT_S = 30.0


def _delete_queue(cluster: PrivateRabbitCluster, queue: str) -> None:
    """Delete ``queue`` through the first running node that takes a connection."""
    for node in cluster.nodes:
        if not node.running:
            continue
        with contextlib.suppress(pika.exceptions.AMQPError, OSError):
            connection = pika.BlockingConnection(pika.URLParameters(node.url))
            try:
                connection.channel().queue_delete(queue)
            finally:
                with contextlib.suppress(pika.exceptions.AMQPError):
                    connection.close()
            return


@contextlib.contextmanager
def _quorum_queue(cluster: PrivateRabbitCluster, via: RabbitClusterNode) -> Iterator[str]:
    """A quorum queue of a unique name declared through ``via``, deleted at the end."""
    queue = f"engines-{secrets.token_hex(4)}"
    connection = pika.BlockingConnection(pika.URLParameters(via.url))
    try:
        connection.channel().queue_declare(
            queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
    finally:
        connection.close()
    try:
        yield queue
    finally:
        _delete_queue(cluster, queue)


def _all_online(cluster: PrivateRabbitCluster, queue: str) -> list[RabbitClusterNode] | None:
    members = cluster.members_of(queue, online=True)
    return members if members == cluster.nodes else None


def test_rabbit_cluster_holds_a_quorum_queue_on_three_nodes(
    rabbit_cluster: PrivateRabbitCluster,
) -> None:
    """Three running nodes; a quorum queue declared through one has a member on each, a
    leader among them, and is seen through every node."""
    nodes = rabbit_cluster.nodes
    assert len(nodes) == 3
    assert all(node.running for node in nodes)
    assert rabbit_cluster.running_nodes() == sorted(node.node for node in nodes)
    assert rabbit_cluster.url == ";".join(node.url for node in nodes)
    with _quorum_queue(rabbit_cluster, via=nodes[1]) as queue:
        assert rabbit_cluster.queue_types()[queue] == "quorum"
        assert rabbit_cluster.members_of(queue) == nodes
        wait_until(
            lambda: _all_online(rabbit_cluster, queue),
            timeout_s=QUEUE_TIMEOUT_S,
            interval_s=0.2,
            message="three online members",
        )
        leader = rabbit_cluster.leader_of(queue)
        assert leader in nodes
        # One cluster: the queue declared through node 2 exists on every node.
        for node in nodes:
            connection = pika.BlockingConnection(pika.URLParameters(node.url))
            try:
                connection.channel().queue_declare(queue, passive=True)
            finally:
                connection.close()


def test_rabbit_cluster_node_killed_and_started_rejoins(
    chaos_engines: None, rabbit_cluster: PrivateRabbitCluster
) -> None:
    """SIGKILL the queue's leader: another running node takes the lead; started again,
    the killed node is a running member of the cluster and its queue member comes back
    online."""
    with _quorum_queue(rabbit_cluster, via=rabbit_cluster.nodes[0]) as queue:
        wait_until(
            lambda: _all_online(rabbit_cluster, queue),
            timeout_s=QUEUE_TIMEOUT_S,
            interval_s=0.2,
            message="three online members",
        )
        leader = rabbit_cluster.leader_of(queue)
        assert leader is not None
        leader.kill()
        assert not leader.running

        def new_leader() -> RabbitClusterNode | None:
            named = rabbit_cluster.leader_of(queue)
            return named if named is not None and named is not leader else None

        successor = wait_until(
            new_leader, timeout_s=QUEUE_TIMEOUT_S, interval_s=0.2, message="a new leader"
        )
        assert successor.running
        assert leader.node not in rabbit_cluster.running_nodes()
        leader.start()  # returns once every node lists it as running
        assert rabbit_cluster.running_nodes() == sorted(node.node for node in rabbit_cluster.nodes)
        wait_until(
            lambda: _all_online(rabbit_cluster, queue),
            timeout_s=QUEUE_TIMEOUT_S,
            interval_s=0.2,
            message="the rejoined member online",
        )


def test_killing_the_node_that_leads_the_queues_mid_run(
    chaos_stack: StackFactory,
    rabbit_cluster: PrivateRabbitCluster,
    redis_url: str,
    sim: RunningSimulator,
    chaos_size: ChaosSize,
) -> None:
    stack = chaos_stack(rabbit_cluster.url, redis_url)
    stack.settings["AMQP_QUEUE_TYPE"] = "quorum"
    prepare_simulator(sim)
    for _ in range(WORKERS):
        stack.start_worker(threads=4)
    queues = (stack.requests_queue, stack.polls_queue)
    types = rabbit_cluster.queue_types()
    assert {queue: types.get(queue) for queue in queues} == dict.fromkeys(queues, "quorum")
    leaders = {rabbit_cluster.leader_of(queue) for queue in queues}
    assert leaders == {rabbit_cluster.nodes[0]}, leaders
    killed: list[RabbitClusterNode] = []
    killed_at = threading.Event()
    outage: dict[str, float] = {}

    def harm(progress: Progress) -> None:
        if not progress.wait_fraction(0.3, timeout_s=600):
            return
        leader = rabbit_cluster.nodes[0]
        began = time.monotonic()
        leader.kill()
        killed.append(leader)
        killed_at.set()  # the producer publishes its second half now
        with (
            ResultConsumer.private(
                stack.amqp_url, prefix=f"{stack.name}.probe", queue_type=QueueType.QUORUM
            ) as replies,
            stack.publisher() as publisher,
        ):
            probe = publisher.publish(
                {
                    "request_id": f"{stack.name}-probe",
                    "workflow": "sketch-maker",
                    "reply_to": replies.queue,
                }
            )
            replies.wait([probe], timeout_s=120)
            outage["time without service s"] = round(time.monotonic() - began, 1)
            replies.delete_queue(if_empty=False)

    jobs = chaos_size.jobs
    try:
        figures, received, stats = run_chaos(
            "rabbitmq cluster: leader killed",
            stack,
            sim,
            jobs=jobs,
            harm=harm,
            timeout_s=180 + jobs * 0.5,
            second_half_after=killed_at,
        )
        assert killed, "the leader was not killed"
        figures.notes |= outage
        # The survivors lead the queues now.
        new_leaders = {rabbit_cluster.leader_of(queue) for queue in queues}
        figures.notes["new leaders"] = ",".join(
            sorted(str(node.index) for node in new_leaders if node is not None)
        )
        assert killed[0] not in new_leaders
        check_guarantees(figures, stats)
        check_hostile(received)
        assert figures.max_posts_per_request <= 1
        assert "time without service s" in outage, "the probe got no result"
    finally:
        for node in killed:
            node.start()  # rejoins the cluster, for the tests after this one
    wait_for(
        lambda: len(rabbit_cluster.members_of(stack.polls_queue, online=True)) == 3,
        "the restarted node's replica of the polls queue to be online",
    )
