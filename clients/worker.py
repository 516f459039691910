"""A long-lived ClientApp worker for a SuperNode started with ``--isolation process``.

Why: in Flower 1.42 a SuperNode's SuperExec (``flower-superexec``, spawned by the SuperNode or run
next to it) starts a fresh ``flwr-clientapp`` process for every message, which re-imports torch and the
app and rebuilds the data each time (seconds per message on a small machine). This worker takes the
SuperExec's place: it asks the SuperNode's Runtime API for ClientApp tasks and runs each one in this
process, so imports, the data set and the model stay loaded across rounds.

    flower-supernode --isolation process --port 9094 ... &
    python -m clients.worker --runtime-api-address 127.0.0.1:9094 --insecure

Each task does what ``flwr-clientapp`` does (pull message, context and FAB; install the FAB; call the
ClientApp; push the reply and the updated context), with the same error replies, but without exiting.
A run with a different FAB (new app code) drops the previous app's modules first, so it is imported anew.
Runtime dependency installation is not supported here (offline clusters: the image holds the deps).

It uses Flower's runtime-client internals (pinned ``flwr==1.42.0``); ``flower-superexec`` is the
supported fallback (``isolation=process`` in ``fedcmi.runtime.loopback``).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from flwr.app import Message
from flwr.app.error import Error
from flwr.cli.install import install_from_fab
from flwr.clientapp.client_app import LoadClientAppError
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.config import get_project_dir
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.tls import validate_and_resolve_root_certificates
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

logger = logging.getLogger("fedcmi.worker")

# Third-party imports the app needs, loaded before the first task (the app itself comes with each FAB).
PRELOAD = "torch,numpy,datasets,flwr_datasets"


class Worker:
    """Polls a SuperNode's Runtime API and runs its ClientApp tasks in this process, one at a time."""

    def __init__(self, address: str, insecure: bool, root_certificates: bytes | None,
                 poll_interval_s: float = 0.2) -> None:
        self.address = address
        self.insecure = insecure
        self.root_certificates = root_certificates
        self.poll_interval_s = poll_interval_s
        self.app_dir: Path | None = None
        self.tasks = 0
        self.stopping = False

    def _client(self, token: str | None = None) -> RuntimeHttpClient:
        interceptors = [RuntimeVersionHttpInterceptor(component_name="SuperExec" if token is None
                                                      else "flwr-clientapp")]
        if token is not None:
            interceptors.append(RuntimeTokenHttpInterceptor(token))
        return RuntimeHttpClient.from_server_address(
            server_address=self.address, insecure=self.insecure, root_certificates=self.root_certificates,
            interceptors=interceptors, retry_invoker=make_simple_http_retry_invoker())

    def serve(self) -> None:
        """Acquire and run ClientApp tasks until SIGTERM/SIGINT."""
        client = self._client()
        try:
            while not self.stopping:
                res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value]))
                if res.HasField("task") and res.token:
                    self.run_task(res.token)
                else:
                    time.sleep(self.poll_interval_s)
        finally:
            client.close()

    def _use_app(self, app_dir: Path) -> None:
        """Forget the modules of a previous app (other FAB) so the new code is imported, not the cached one."""
        if self.app_dir is not None and self.app_dir != app_dir:
            old = str(self.app_dir)
            for name, module in list(sys.modules.items()):
                if (getattr(module, "__file__", None) or "").startswith(old):
                    del sys.modules[name]
            if old in sys.path:
                sys.path.remove(old)
        self.app_dir = app_dir

    def run_task(self, token: str) -> None:
        """One message, as ``flwr-clientapp`` runs it; failures become error replies, never an exit."""
        client = self._client(token)
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        message = reply = context = None
        status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
        started = time.monotonic()
        try:
            heartbeat.start()
            message, context, run, fab = pull_task_input(client)
            install_from_fab(fab.content, skip_prompt=True)
            self._use_app(get_project_dir(run.fab_id, run.fab_version, fab.hash_str))
            load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
            reply = load(run.fab_id, run.fab_version, fab.hash_str)(message=message, context=context)
            status, details = SubStatus.COMPLETED, ""
        except Exception as exc:  # noqa: BLE001 - the ClientApp's error goes back to the server as a reply
            code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
            reason = f"{type(exc)}:<'{exc}'>"
            if isinstance(exc, LoadClientAppError):
                code, reason = ErrorCode.LOAD_CLIENT_APP_EXCEPTION, f"could not load the ClientApp: {exc}"
            logger.error("ClientApp raised: %s", reason)
            details = reason
            if message is not None:
                reply = Message(Error(code=code, reason=reason), reply_to=message)
        finally:
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
            except Exception:  # noqa: BLE001
                logger.exception("failed to push the reply")
            push_task_output(client=client, context=context, sub_status=status, details=details)
            if heartbeat.is_running:
                heartbeat.stop()
            client.close()
        self.tasks += 1
        logger.info("task %d (%s) done in %.2f s", self.tasks,
                    message.metadata.message_type if message is not None else "?", time.monotonic() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m clients.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime-api-address", default="127.0.0.1:9094",
                        help="the SuperNode's Runtime API (its --port); default 127.0.0.1:9094")
    parser.add_argument("--insecure", action="store_true", help="plain HTTP to the Runtime API")
    parser.add_argument("--root-certificates", default=None, help="CA of the SuperNode's Runtime API certificate")
    parser.add_argument("--preload", default=PRELOAD,
                        help=f"comma-separated modules to import before the first task (default {PRELOAD})")
    parser.add_argument("--poll-interval", type=float,
                        default=float(os.environ.get("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.2")))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    started = time.monotonic()
    for name in filter(None, (m.strip() for m in args.preload.split(","))):
        importlib.import_module(name)
    logger.info("preloaded %s in %.1f s", args.preload or "nothing", time.monotonic() - started)
    worker = Worker(args.runtime_api_address, args.insecure,
                    validate_and_resolve_root_certificates(args.root_certificates, args.insecure),
                    args.poll_interval)

    def stop(signum: int, frame: FrameType | None) -> None:
        gc.freeze()  # no last full garbage collection over torch's and Flower's objects (fedcmi.cli.run says why)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    logger.info("serving ClientApp tasks of the SuperNode at %s", args.runtime_api_address)
    worker.serve()


if __name__ == "__main__":
    main()
