// Command helm is the upstream Helm 4 command line, built from the helm.sh/helm/v4 module
// for the kserve-canary chart's tests (helm lint, helm template). Nothing is added: every
// command and flag is upstream's.
package main

import (
	"errors"
	"os"

	_ "k8s.io/client-go/plugin/pkg/client/auth" // kubeconfig auth providers, as upstream

	helmcmd "helm.sh/helm/v4/pkg/cmd"
	"helm.sh/helm/v4/pkg/kube"
)

func main() {
	// The field manager of helm's writes, whatever this binary is called.
	kube.ManagedFieldsManager = "helm"
	root, err := helmcmd.NewRootCmd(os.Stdout, os.Args[1:], helmcmd.SetupLogging)
	if err != nil {
		os.Stderr.WriteString("Error: " + err.Error() + "\n")
		os.Exit(1)
	}
	if err := root.Execute(); err != nil {
		var exit helmcmd.CommandError
		if errors.As(err, &exit) {
			os.Exit(exit.ExitCode)
		}
		os.Exit(1)
	}
}
