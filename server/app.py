"""The ServerApp: build the strategy, run the rounds, evaluate centrally, write the run directory.

``app`` is what ``flwr run .`` loads (config from ``context.run_config``); ``make_server_app`` binds a
resolved config and a progress reporter for ``fedcmi simulate``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedcmi.config import RunConfig, config_keys, from_mapping
from fedcmi.data import load_data
from fedcmi.evaluation import evaluate
from fedcmi.models import build_model
from fedcmi.results import RunDirectory, default_run_dir
from server.strategy import FedCMIStrategy

logger = logging.getLogger("fedcmi")

Reporter = Callable[[dict[str, Any]], None]


def _modality_name(data_modalities: tuple[str, str], code: str | None) -> str:
    if code is None:
        return ""
    return data_modalities[0] if code == "a" else data_modalities[1]


def run_server(grid: Grid, cfg: RunConfig, reporter: Reporter | None = None) -> RunDirectory:
    """Run all rounds of ``cfg`` on ``grid``; every round's metrics are on disk when it ends."""
    torch.manual_seed(cfg.seed)
    data = load_data(cfg)
    decomposed = cfg.strategy not in ("fedavg", "fedprox")
    model = build_model(cfg.encoder, data.shapes(), data.num_classes, cfg.feature_dim, decomposed,
                        cfg.projector)
    out = Path(cfg.out_dir) if cfg.out_dir else default_run_dir(cfg)
    run_dir = RunDirectory(out, cfg.replace(out_dir=str(out)), data.modalities)
    logger.info("writing results to %s", out)
    xa, xb, y = (torch.from_numpy(t) for t in data.arrays("test"))
    strategy = FedCMIStrategy(clients_per_round=cfg.clients_per_round, num_classes=data.num_classes,
                              run_config=cfg.to_dict(), gamma=cfg.gamma, warmup_rounds=cfg.warmup_rounds,
                              seed=cfg.seed)
    clock = {"t": time.monotonic()}

    def central_evaluation(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        res = evaluate(model, xa, xb, y, data.num_classes, data.modalities, cfg.eval_batch_size)
        info = strategy.round_log.get(server_round, {})
        train = strategy.train_metrics.get(server_round, {})
        guidance = strategy.guidance  # what the statistics of this round say (sent next round)
        row: dict[str, Any] = {"round": server_round, **res,
                               **{k.replace("-", "_"): float(v) for k, v in train.items() if k.startswith("loss")},
                               "dominant": _modality_name(data.modalities, guidance.dominant if guidance else None),
                               "ratio": guidance.ratio if guidance else math.nan,
                               "clients_ok": int(info.get("replies", 0)),
                               "clients_failed": int(info.get("failed", 0)),
                               "wall_s": round(time.monotonic() - clock["t"], 3)}
        clock["t"] = time.monotonic()
        run_dir.add_round(row)
        if reporter is not None:
            reporter(row)
        return MetricRecord({k: float(v) for k, v in row.items()
                             if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))})

    try:
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                                num_rounds=cfg.num_server_rounds, timeout=cfg.round_timeout,
                                train_config=ConfigRecord(), evaluate_fn=central_evaluation)
    except BaseException as exc:
        run_dir.finish("failed", error=f"{type(exc).__name__}: {exc}", rounds=len(run_dir.rows) - 1)
        raise
    model.load_state_dict(result.arrays.to_torch_state_dict())
    run_dir.save_model(model.state_dict())
    run_dir.plot()
    run_dir.finish("complete", rounds=cfg.num_server_rounds)
    return run_dir


def make_server_app(cfg: RunConfig, reporter: Reporter | None = None,
                    outcome: dict[str, Any] | None = None) -> ServerApp:
    """A ServerApp bound to a resolved config (for ``fedcmi simulate``)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_dir = run_server(grid, cfg, reporter)
        if outcome is not None:
            outcome["run_dir"] = run_dir

    return server_app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point of ``flwr run .``: config from ``[tool.flwr.app.config]`` and ``--run-config``."""
    known = config_keys()
    cfg = from_mapping({k: v for k, v in context.run_config.items() if k in known})
    run_server(grid, cfg)
