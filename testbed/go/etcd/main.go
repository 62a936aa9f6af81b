// Command etcd runs a single-member etcd server (go.etcd.io/etcd/server/v3/embed) for the
// kserve-canary test bed. It takes only the flags the test bed needs, runs until SIGTERM
// or SIGINT, then shuts the member down cleanly.
package main

import (
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

func parseURL(flagName, raw string) url.URL {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme == "" || u.Host == "" {
		fmt.Fprintf(os.Stderr, "etcd: -%s: not a URL: %q\n", flagName, raw)
		os.Exit(2)
	}
	return *u
}

func main() {
	dataDir := flag.String("data-dir", "", "directory for the member's data (required)")
	name := flag.String("name", "default", "member name")
	clientURL := flag.String("listen-client-url", "http://127.0.0.1:2379", "URL to serve clients on (also advertised)")
	peerURL := flag.String("listen-peer-url", "http://127.0.0.1:2380", "URL to serve peers on (also advertised)")
	noFsync := flag.Bool("unsafe-no-fsync", false, "skip fsync (throwaway data only)")
	logLevel := flag.String("log-level", "warn", "debug, info, warn or error")
	flag.Parse()
	if *dataDir == "" || flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}

	client := parseURL("listen-client-url", *clientURL)
	peer := parseURL("listen-peer-url", *peerURL)

	cfg := embed.NewConfig()
	cfg.Name = *name
	cfg.Dir = *dataDir
	cfg.ListenClientUrls = []url.URL{client}
	cfg.AdvertiseClientUrls = []url.URL{client}
	cfg.ListenPeerUrls = []url.URL{peer}
	cfg.AdvertisePeerUrls = []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.UnsafeNoFsync = *noFsync
	cfg.LogLevel = *logLevel
	cfg.LogOutputs = []string{"stderr"}

	server, err := embed.StartEtcd(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcd: start: %v\n", err)
		os.Exit(1)
	}

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)

	select {
	case <-server.Server.ReadyNotify():
		fmt.Fprintf(os.Stderr, "etcd: ready, serving clients on %s\n", client.String())
	case <-time.After(60 * time.Second):
		server.Server.Stop()
		fmt.Fprintln(os.Stderr, "etcd: not ready after 60s")
		os.Exit(1)
	case sig := <-signals:
		server.Close()
		fmt.Fprintf(os.Stderr, "etcd: stopped by %v before ready\n", sig)
		os.Exit(0)
	}

	select {
	case err := <-server.Err():
		server.Close()
		fmt.Fprintf(os.Stderr, "etcd: %v\n", err)
		os.Exit(1)
	case sig := <-signals:
		server.Close()
		fmt.Fprintf(os.Stderr, "etcd: stopped by %v\n", sig)
	}
}
