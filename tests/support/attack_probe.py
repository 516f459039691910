"""What attacked nodes send, seen from a bare ServerApp (tests only): one discovery (QUERY) to every node and
one TRAIN round with the initial model, through Flower's simulation engine with fedcmi's ClientApp wrapped in
the attack mod (``attacks.py``). No strategy reads the replies, so what is recorded does not depend on the
server's trust rules: it is exactly what each node put on the wire.

    python tests/support/attack_probe.py --spec 'sizelie-zero:1, steal=0:2' --out probe.json num-clients=3 ...

``probe.json``: ``{"query": [{"node", "partition-id", "kind", "num-examples"}...],
"train": [{"node", "partition-id", "info-partition-id", "num-examples", "max-abs-update"}...],
"trace": [the mod's trace lines, sorted, once each]}``, each list in node-id order.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

import attacks  # noqa: E402
import numpy as np  # noqa: E402
import ray.cloudpickle  # noqa: E402

ray.cloudpickle.register_pickle_by_value(attacks)  # Ray actors cannot import this test-only module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("overrides", nargs="*", help="config keys, key=value")
    args = parser.parse_args(argv)

    import torch
    from flwr.app import ArrayRecord, Context, Message, MessageType
    from flwr.serverapp import Grid, ServerApp

    from fedcmi import protocol
    from fedcmi.config import effective
    from fedcmi.config.parse import parse_overrides
    from fedcmi.data import load_data
    from fedcmi.dominance import Guidance
    from fedcmi.methods.registry import method_spec
    from fedcmi.models import ModelSpec, model_for
    from fedcmi.npy import record_arrays
    from fedcmi.runtime.simulation import run_app

    cfg = effective(parse_overrides(args.overrides))
    work = args.out.resolve().parent
    spec_file, trace_file = work / "probe-attack.txt", work / "probe-trace.txt"
    spec_file.write_text(args.spec)
    trace_file.write_text("")
    found: dict = {"query": [], "train": []}
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        deadline = time.monotonic() + 600  # a backstop: nodes connect as Ray starts their actors (slow under load)
        while len(grid.get_node_ids()) < cfg.federation.num_clients and time.monotonic() < deadline:
            time.sleep(0.2)
        nodes = sorted(grid.get_node_ids())
        queries = [Message(protocol.query_content(cfg.client_dict()), dst_node_id=n, message_type=MessageType.QUERY)
                   for n in nodes]
        for reply in sorted(grid.send_and_receive(queries, timeout=600), key=lambda m: m.metadata.src_node_id):
            info = reply.content[protocol.INFO]
            found["query"].append({"node": reply.metadata.src_node_id, **{k: info[k] for k in (
                protocol.PARTITION_ID, protocol.KIND, protocol.NUM_EXAMPLES)}})
        spec = ModelSpec.of(load_data(cfg))
        torch.manual_seed(cfg.federation.seed)
        arrays = ArrayRecord(model_for(cfg.model, spec, method_spec(cfg.method.strategy).decomposed).state_dict())
        glob = record_arrays(arrays)
        content = protocol.train_content(arrays, cfg.client_dict(), 1, Guidance(False, None, None), spec)
        msgs = [Message(content, dst_node_id=n, message_type=MessageType.TRAIN) for n in nodes]
        for reply in sorted(grid.send_and_receive(msgs, timeout=600), key=lambda m: m.metadata.src_node_id):
            if reply.has_error():
                found["train"].append({"node": reply.metadata.src_node_id, "error": reply.error.reason[-500:]})
                continue
            c = reply.content
            got = record_arrays(c[protocol.ARRAYS])
            update = max(float(np.max(np.abs(v.astype(np.float64) - glob[k]))) for k, v in got.items()
                         if np.issubdtype(v.dtype, np.floating))
            found["train"].append({"node": reply.metadata.src_node_id,
                                   "partition-id": c[protocol.METRICS][protocol.PARTITION_ID],
                                   "info-partition-id": c[protocol.INFO][protocol.PARTITION_ID],
                                   "num-examples": c[protocol.METRICS][protocol.NUM_EXAMPLES],
                                   "max-abs-update": update})

    run_app(server, cfg, client_app=attacks.attacked_client_app(str(spec_file), cfg.reliability.update_norm_multiple,
                                                                str(trace_file)))
    found["trace"] = sorted(set(trace_file.read_text().splitlines()))  # a retried message logs twice
    args.out.write_text(json.dumps(found, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
