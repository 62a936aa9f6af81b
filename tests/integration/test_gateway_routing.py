"""The test bed's Gateway honours kserve-canary's own HTTPRoute in Standard mode.

KServe v0.20.0 sends a Standard-mode InferenceService's requests to the stable Service only
(KSERVE.md §2.4), so a canary serves nothing until the controller's HTTPRoute
``<isvc>-kserve-canary`` weights it. This test drives the real
:class:`~canary.routing.standard.StandardRouter` against the shared test bed and counts what
each Deployment served on the traffic simulator's own metrics endpoints (those Prometheus
scrapes, listed in its service-discovery file), so no scrape interval is waited for.

Sample size: at RATE requests per second a window of WINDOW_REQUESTS requests takes about
3 s; the canary's 25 % share then has a standard error of sqrt(0.25 × 0.75 / 6000) ≈ 0.6 %,
so TOLERANCE (4 points) is about seven standard errors, with room for a traffic tick that
lands between the scrapes of the two targets (0.2 s of traffic: at most 1 point).
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from canary.k8s.client import HTTP_ROUTE, INFERENCE_SERVICE, NotFound
from canary.model import SetTraffic
from canary.routing.standard import StandardRouter, route_name
from testbed.behaviour import ModelBehaviour
from testbed.testbed import Testbed

pytestmark = pytest.mark.integration

NAME = "m"
STABLE, CANARY = f"{NAME}-predictor", f"{NAME}-canary-predictor"
RATE = 2_000.0
WINDOW_REQUESTS = 6_000
SHORT_WINDOW = 2_000
TOLERANCE = 0.04
DEADLINE = 15.0
POLL = 0.1


class Bed:
    def __init__(self, testbed: Testbed, http: httpx.Client) -> None:
        token = uuid.uuid4().hex[:8]
        self.testbed = testbed
        self.kube = testbed.kube
        self.http = http
        self.namespace = testbed.namespace(f"gateway-routing-{token}")
        self.v1 = f"s3://gateway-{token}/v1"
        self.v2 = f"s3://gateway-{token}/v2"
        book = testbed.behaviour().with_model(self.v1, ModelBehaviour())
        book = book.with_model(self.v2, ModelBehaviour())
        testbed.set_behaviour(book.with_rate(self.namespace, NAME, RATE))
        self.router = StandardRouter(self.kube)

    def create(self) -> None:
        def model(uri: str) -> dict[str, Any]:
            return {"modelFormat": {"name": "sklearn"}, "storageUri": uri}

        self.kube.create(
            INFERENCE_SERVICE,
            self.namespace,
            {
                "apiVersion": "serving.kserve.io/v1beta1",
                "kind": "InferenceService",
                "metadata": {
                    "name": NAME,
                    "annotations": {"serving.kserve.io/deploymentMode": "Standard"},
                },
                "spec": {
                    "predictor": {"model": model(self.v1)},
                    "canary": [
                        {
                            "predictor": {
                                "name": "canary",
                                # the CRD requires the name in a canary's model
                                "model": {**model(self.v2), "name": "kserve-container"},
                            },
                            "trafficPercent": 10,
                        }
                    ],
                },
            },
        )

    def apply(self, action: SetTraffic) -> None:
        self.router.apply(self.namespace, NAME, action, resource_version=None)

    def served(self) -> dict[str, int]:
        """Requests each target of this namespace has served so far (``istio_requests_total``
        summed over response codes), read from the traffic simulator's endpoints."""
        counts: dict[str, int] = {}
        for entry in json.loads(self.testbed.sd_file.read_text()):
            labels = entry["labels"]
            if labels["namespace"] != self.namespace:
                continue
            path = labels["__metrics_path__"]
            response = self.http.get(f"http://{entry['targets'][0]}{path}")
            if response.status_code == 404:
                continue  # the target went away after the file was read
            response.raise_for_status()
            counts[path.rsplit("/", 1)[-1]] = int(
                sum(
                    sample.value
                    for family in text_string_to_metric_families(response.text)
                    for sample in family.samples
                    if sample.name == "istio_requests_total"
                )
            )
        return counts

    def wait(self, what: str, check: Callable[[dict[str, int]], bool]) -> dict[str, int]:
        end = time.monotonic() + DEADLINE
        while True:
            counts = self.served()
            if check(counts):
                return counts
            if time.monotonic() > end:
                raise AssertionError(f"timed out waiting for {what}; served so far: {counts}")
            time.sleep(POLL)

    def window(self, requests: int) -> dict[str, int]:
        """What each target served while at least ``requests`` were served in all (targets
        present at the end of the window)."""
        start = self.served()
        end = self.wait(
            f"{requests} requests",
            lambda now: sum(now.values()) - sum(start.get(k, 0) for k in now) >= requests,
        )
        return {target: count - start.get(target, 0) for target, count in end.items()}

    def route(self) -> dict[str, Any] | None:
        try:
            return self.kube.get(HTTP_ROUTE, self.namespace, route_name(NAME))
        except NotFound:
            return None


@pytest.fixture
def bed(testbed: Testbed) -> Iterator[Bed]:
    with httpx.Client(timeout=5) as http:
        bed = Bed(testbed, http)
        try:
            yield bed
        finally:  # stop this InferenceService's traffic for the rest of the session
            with contextlib.suppress(NotFound):
                bed.kube.delete(INFERENCE_SERVICE, bed.namespace, NAME)


def share(counts: dict[str, int]) -> float:
    return counts.get(CANARY, 0) / sum(counts.values())


def test_the_canary_serves_what_our_httproute_gives_it(bed: Bed) -> None:
    bed.create()
    end = time.monotonic() + DEADLINE
    while not bed.router.observe(bed.namespace, NAME).view.latest_ready:
        assert time.monotonic() < end, "the canary Deployment did not become ready"
        time.sleep(POLL)
    bed.wait("both Deployments up", lambda now: now.get(STABLE, 0) > 0 and CANARY in now)

    # v0.20.0: trafficPercent (10) routes nothing, and there is no route of ours yet
    assert bed.route() is None
    before = bed.window(SHORT_WINDOW)
    assert before[CANARY] == 0, before

    # our route at 75/25: the canary Deployment serves a quarter of the requests
    bed.apply(SetTraffic(CANARY, 25, "step"))
    assert bed.route() is not None
    at_step = bed.served()[CANARY]
    bed.wait("the canary to serve", lambda now: now[CANARY] > at_step)
    stepped = bed.window(WINDOW_REQUESTS)
    assert share(stepped) == pytest.approx(0.25, abs=TOLERANCE), stepped

    # without our route, KServe's split is back: nothing to the canary
    bed.kube.delete(HTTP_ROUTE, bed.namespace, route_name(NAME))
    end = time.monotonic() + DEADLINE
    while True:  # the window that saw the deletion may still show canary requests
        after_delete = bed.window(SHORT_WINDOW // 4)
        if after_delete[CANARY] == 0:
            break
        assert time.monotonic() < end, "the canary kept serving without the route"
    assert bed.window(SHORT_WINDOW)[CANARY] == 0

    # a rollback: our route 100 % to the stable, then the canary is removed
    bed.apply(SetTraffic(CANARY, 25, "step"))
    at_step = bed.served()[CANARY]
    bed.wait("the canary to serve again", lambda now: now[CANARY] > at_step)
    bed.apply(SetTraffic(CANARY, 25, "rollback"))
    route = bed.route()
    assert route is not None
    assert [(r["name"], r["weight"]) for r in route["spec"]["rules"][0]["backendRefs"]] == [
        (STABLE, 100)
    ]
    bed.wait("the canary Deployment to go", lambda now: CANARY not in now)
    after_rollback = bed.window(SHORT_WINDOW)
    assert after_rollback == {STABLE: after_rollback[STABLE]}
    assert after_rollback[STABLE] >= SHORT_WINDOW
