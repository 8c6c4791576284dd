"""How an operator names a worker (cluster drain NAME): its id, its address, or its host when that is unique."""

from __future__ import annotations

from cluster.router.registry import Registry
from proto import orchard_pb2 as pb


def test_a_host_shared_by_two_agents_names_both_and_an_address_names_one() -> None:
    registry = Registry(["127.0.0.1:50051", "127.0.0.1:50052", "10.0.0.7:50051"])
    registry.workers["10.0.0.7:50051"].info = pb.InfoReply(worker_id="studio-3")
    assert len(registry.find("127.0.0.1")) == 2  # the router answers 409, naming both
    assert [h.address for h in registry.find("127.0.0.1:50052")] == ["127.0.0.1:50052"]
    assert [h.address for h in registry.find("studio-3")] == ["10.0.0.7:50051"]
    assert [h.address for h in registry.find("10.0.0.7")] == ["10.0.0.7:50051"]
    assert registry.find("studio-9") == []
