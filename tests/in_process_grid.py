"""A Flower grid that runs the production ClientApp in this process, for tests of the
server's round loop and aggregation path without Ray, a network or a clock."""

from __future__ import annotations

from flwr.app import Context, Message, RecordDict

from fedssl.client.app import make_client_app


class InProcessGrid:
    """Delivers every message to the production ClientApp of the node it is addressed to
    (nodes 100, 101, ...: simulated partitions 0, 1, ... of ``num_nodes``); ``sent`` lists the
    message types in the order they went out."""

    def __init__(self, num_nodes: int) -> None:
        self.app = make_client_app()
        self.contexts = {
            100 + i: Context(run_id=1, node_id=100 + i, state=RecordDict(), run_config={},
                             node_config={"partition-id": i, "num-partitions": num_nodes})
            for i in range(num_nodes)}
        self.sent: list[str] = []

    def get_node_ids(self) -> list[int]:
        return sorted(self.contexts)

    def send_and_receive(self, messages, timeout=None) -> list[Message]:
        replies = []
        for msg in messages:
            self.sent.append(msg.metadata.message_type)
            reply = self.app(msg, self.contexts[msg.metadata.dst_node_id])
            # a SuperLink stamps the replying node; here the reply comes from the addressee
            reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
            replies.append(reply)
        return replies
