"""How long the local test bed takes to start and stop on this machine.

    make bench-sandbox            # or: .venv/bin/python -m bench.sandbox_startup --runs 3

Each run starts a detached sandbox exactly as `python -m testbed up` does, stops it as
`python -m testbed down` does, and reports the phases. The binaries must already be built
(`python -m testbed build`); their build time is not part of this benchmark. Run it as a
module from the repository root: the test bed (testbed/) is not installed with the product.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from testbed.testbed import Testbed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    ups: list[float] = []
    downs: list[float] = []
    for run in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory(prefix="ksc-bench-") as directory:
            bed = Testbed(Path(directory), detach=True)
            start = time.monotonic()
            bed.up()
            up = time.monotonic() - start
            timings = bed.timings
            start = time.monotonic()
            Testbed.stop_from_state(Path(directory))
            bed.down()
            down = time.monotonic() - start
        ups.append(up)
        downs.append(down)
        assert timings is not None
        print(
            f"run {run}: up {up:.1f} s (binaries {timings.binaries:.2f}, cluster "
            f"{timings.cluster:.1f}, CRDs {timings.crds:.1f}, simulators {timings.simulators:.1f}, "
            f"Prometheus {timings.prometheus:.1f}); down {down:.1f} s"
        )
    print(
        f"up: median {statistics.median(ups):.1f} s, max {max(ups):.1f} s; "
        f"down: median {statistics.median(downs):.1f} s (target: up < 20 s)"
    )


if __name__ == "__main__":
    main()
