"""The simulator process of the test bed: KServe and model traffic, wired together.

``python -m testbed.simulators --kubeconfig K --behaviour B --sd-file F --ready-file R``

The KServe simulator writes InferenceService status; every time the effective split of an
InferenceService changes, the traffic simulator is told where requests now go. In between
sits the test bed's Gateway (:mod:`testbed.gateway`): for a Standard-mode
InferenceService with kserve-canary's own HTTPRoute (``<isvc>-kserve-canary``), requests
follow that route's weights instead of KServe's split. The process runs until SIGTERM or
SIGINT, then stops all three cleanly.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from canary.k8s.client import KubeClient
from canary.log import configure_logging, get_logger
from testbed.behaviour import BehaviourWatcher
from testbed.gateway import GatewaySimulator
from testbed.kserve.controller import KServeSimulator, SplitTarget
from testbed.traffic import Target, TrafficSimulator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="testbed.simulators")
    parser.add_argument("--kubeconfig", required=True, type=Path)
    parser.add_argument("--behaviour", required=True, type=Path)
    parser.add_argument("--sd-file", required=True, type=Path)
    parser.add_argument("--ready-file", required=True, type=Path)
    parser.add_argument("--standard-routing", choices=["v0.20", "weighted"], default="v0.20")
    args = parser.parse_args(argv)

    configure_logging("production", "info")
    log = get_logger("sandbox.simulators")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    traffic = TrafficSimulator(BehaviourWatcher(args.behaviour), sd_file=args.sd_file)
    kube = KubeClient.from_kubeconfig(args.kubeconfig)

    def publish(namespace: str, name: str, targets: list[SplitTarget]) -> None:
        routes = [Target(t.target, t.percent, t.storage_uri, t.mode) for t in targets]
        traffic.set_routes(namespace, name, routes)

    gateway = GatewaySimulator(kube, publish)
    kserve = KServeSimulator(
        kube,
        BehaviourWatcher(args.behaviour),
        standard_routing=args.standard_routing,
        on_split_change=gateway.on_split_change,
        on_standard_world=gateway.on_standard_world,
    )
    traffic.start()
    gateway.start()
    kserve.start()
    args.ready_file.write_text(str(traffic.port))
    log.info("sandbox.simulators_ready", metrics_port=traffic.port)
    stop.wait()
    log.info("sandbox.simulators_stopping")
    # both wait for their open watch to return (up to its 2 s timeout): wait in parallel
    gateway_stopping = threading.Thread(target=gateway.stop, name="gateway-stop")
    gateway_stopping.start()
    kserve.stop()
    gateway_stopping.join()
    traffic.stop()
    kube.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
