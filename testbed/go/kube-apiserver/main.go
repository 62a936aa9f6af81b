// Command kube-apiserver is the upstream Kubernetes API server, built from the
// k8s.io/kubernetes module for the kserve-canary test bed. It adds nothing of its
// own: every flag and behaviour is upstream's.
package main

import (
	"os"
	_ "time/tzdata" // CronJob time-zone validation must not depend on the host's zoneinfo

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
