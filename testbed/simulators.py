"""The simulator process of the test bed: KServe and model traffic, wired together.

``python -m testbed.simulators --kubeconfig K --behaviour B --sd-file F --ready-file R
[--logger-url URL]``

The KServe simulator writes InferenceService status; every time the effective split of an
InferenceService changes, the traffic simulator is told where requests now go. In between
sits the test bed's Gateway (:mod:`testbed.gateway`): for a Standard-mode
InferenceService with kserve-canary's own HTTPRoute (``<isvc>-kserve-canary``), requests
follow that route's weights instead of KServe's split. Beside it the test bed's mesh for
shadow traffic (:mod:`testbed.mirror`) turns kserve-canary's shadow VirtualService or
HTTPRoute into the traffic simulator's mirror; it hears of each split after the Gateway, so
a challenger's own routes are in place before a mirror shares them. With ``--logger-url``
the traffic simulator sends the payload-logger events of mirrored requests there
(:mod:`testbed.payload_logger`). The process runs until SIGTERM or SIGINT, then stops
everything cleanly.
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
from testbed.kserve.standard import StandardWorld
from testbed.mirror import MirrorSimulator
from testbed.traffic import LATENCY_LAYOUTS, MODES, PROFILES, Target, TrafficSimulator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="testbed.simulators")
    parser.add_argument("--kubeconfig", required=True, type=Path)
    parser.add_argument("--behaviour", required=True, type=Path)
    parser.add_argument("--sd-file", required=True, type=Path)
    parser.add_argument("--ready-file", required=True, type=Path)
    parser.add_argument("--standard-routing", choices=["v0.20", "weighted"], default="v0.20")
    parser.add_argument(
        "--logger-url", default=None, help="where payload-logger events go (default: none)"
    )
    parser.add_argument(
        "--traffic-mode", choices=MODES, default="per-request",
        help="draw each request, or each target's counts per tick (thousands of services)",
    )  # fmt: skip
    parser.add_argument(
        "--tick-interval", type=float, default=0.2, help="seconds between traffic ticks"
    )
    parser.add_argument(
        "--profiles", default=None,
        help=f"series groups each target exposes, comma-separated (default: {','.join(PROFILES)})",
    )  # fmt: skip
    parser.add_argument(
        "--latency-buckets", choices=sorted(LATENCY_LAYOUTS), default="fine",
        help="the latency histograms' bounds: fine (accurate quantiles) or coarse (what real "
        "exporters send)",
    )  # fmt: skip
    args = parser.parse_args(argv)

    configure_logging("production", "info")
    log = get_logger("sandbox.simulators")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    traffic = TrafficSimulator(
        BehaviourWatcher(args.behaviour),
        sd_file=args.sd_file,
        logger_url=args.logger_url,
        mode=args.traffic_mode,
        tick_interval=args.tick_interval,
        profiles=args.profiles.split(",") if args.profiles else None,
        latency_buckets=args.latency_buckets,
    )
    kube = KubeClient.from_kubeconfig(args.kubeconfig)

    def publish(namespace: str, name: str, targets: list[SplitTarget]) -> None:
        routes = [Target(t.target, t.percent, t.storage_uri, t.mode) for t in targets]
        traffic.set_routes(namespace, name, routes)

    gateway = GatewaySimulator(kube, publish)
    mirror = MirrorSimulator(kube, traffic.set_mirror)

    def on_split_change(namespace: str, name: str, targets: list[SplitTarget]) -> None:
        gateway.on_split_change(namespace, name, targets)
        mirror.on_split_change(namespace, name, targets)

    def on_standard_world(namespace: str, name: str, world: StandardWorld | None) -> None:
        gateway.on_standard_world(namespace, name, world)
        mirror.on_standard_world(namespace, name, world)

    kserve = KServeSimulator(
        kube,
        BehaviourWatcher(args.behaviour),
        standard_routing=args.standard_routing,
        on_split_change=on_split_change,
        on_standard_world=on_standard_world,
    )
    traffic.start()
    gateway.start()
    mirror.start()
    kserve.start()
    args.ready_file.write_text(str(traffic.port))
    log.info("sandbox.simulators_ready", metrics_port=traffic.port)
    stop.wait()
    log.info("sandbox.simulators_stopping")
    # each waits for its open watches to return (up to their 2 s timeout): wait in parallel
    stopping = [
        threading.Thread(target=gateway.stop, name="gateway-stop"),
        threading.Thread(target=mirror.stop, name="mirror-stop"),
    ]
    for thread in stopping:
        thread.start()
    kserve.stop()
    for thread in stopping:
        thread.join()
    traffic.stop()
    kube.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
