module kserve-canary.local/testbed/crds

go 1.26.0

require (
	github.com/cert-manager/cert-manager v1.21.2
	github.com/kserve/kserve v0.20.0
	github.com/prometheus-operator/prometheus-operator v0.85.0
	istio.io/api v1.32.0
	sigs.k8s.io/gateway-api v1.6.1
)
