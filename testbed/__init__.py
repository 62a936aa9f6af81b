"""The local test bed: development only, not part of the product (nor of its wheel).

kube-apiserver + etcd built from the Go modules in ``go/``, the real CRDs, the KServe,
Gateway, mirror and traffic simulators, Prometheus and PostgreSQL launchers, and the demo. The
product packages (``canary``, ``analysis``, ``approvals``) never import it (an
import-linter contract); tests, benchmarks and ``python -m testbed`` do.
"""
