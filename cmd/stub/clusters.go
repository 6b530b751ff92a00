package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"github.com/keyhole-dev/keyhole/cmd/internal/cli"
	"github.com/keyhole-dev/keyhole/config"
	"github.com/keyhole-dev/keyhole/stub"
	"github.com/keyhole-dev/keyhole/tunnel"
)

// liveTimeout bounds the read of a running stub's metrics.
const liveTimeout = 5 * time.Second

func newClustersCmd(o rootOpts, stdout, stderr io.Writer) *cobra.Command {
	var lf, llf clusterListFlags // the group's own flags, and list's
	cmd := &cobra.Command{
		Use:   "clusters",
		Short: "List clusters with their labels, join secrets, agents and health (with no subcommand: list)",
		Long: `Clusters lists the registered clusters: labels, age, the join secret's age and
expiry, and, from the running stub, their connected agents and whether a probe
through an agent reached the cluster's API server in the last 30 s (READY).

Registrations come from the state (the state directory, or the hub's Secret).
Agents and health live in the running stub only: they are read from its
Prometheus metrics, at metrics.listen of the config as seen from this machine
(127.0.0.1 for an unspecified host) or at --metrics-url. When no stub answers
there, agents and health are shown as unknown and stderr says why. With
replicas any one replica answers for all: every agent holds a session to each.`,
		Example: `  # On the stub's machine, or in a replica
  stub clusters
  kubectl -n keyhole exec deploy/keyhole-stub -- keyhole-stub clusters

  # From elsewhere, through a port-forward to a replica's metrics
  kubectl -n keyhole port-forward deploy/keyhole-stub 9090 &
  stub clusters --metrics-url http://127.0.0.1:9090/metrics -o yaml

  # Issue a new join secret for a cluster
  stub clusters rotate-secret prod > prod-agent.yaml`,
		Args: cli.SubcommandOrNoArgs,
		RunE: func(*cobra.Command, []string) error { return listClusters(o.configPath(), lf, stdout, stderr) },
	}
	lf.add(cmd)
	list := &cobra.Command{
		Use:     "list",
		Short:   "List clusters with their labels, join secrets, agents and health",
		Long:    `List is what "stub clusters" does with no subcommand; see "stub clusters --help".`,
		Example: "  stub clusters list -o json",
		Aliases: []string{"ls"},
		Args:    cli.ExactArgs(),
		RunE:    func(*cobra.Command, []string) error { return listClusters(o.configPath(), llf, stdout, stderr) },
	}
	llf.add(list)
	cmd.AddCommand(list, newRotateSecretCmd(o, stdout, stderr))
	return cmd
}

// clusterListFlags are the flags of `stub clusters [list]`.
type clusterListFlags struct {
	output     *string
	metricsURL string
}

func (f *clusterListFlags) add(cmd *cobra.Command) {
	f.output = addOutputFlag(cmd)
	cmd.Flags().StringVar(&f.metricsURL, "metrics-url", "", "read agents and health from the stub metrics at this URL (default: from the config's metrics.listen)")
}

// clusterItem is a cluster as `stub clusters -o json|yaml` prints it.
// Agents and Ready are null when the running stub could not be asked.
type clusterItem struct {
	stub.ClusterInfo
	Agents []stub.LiveAgent `json:"agents"`
	Ready  *bool            `json:"ready"`
}

// clusterList is the -o json|yaml document: the list, and where its live
// part came from or why it is missing.
type clusterList struct {
	list[clusterItem]
	Live liveSource `json:"live"`
}

type liveSource struct {
	MetricsURL string `json:"metricsURL,omitempty"`
	Error      string `json:"error,omitempty"`
}

func listClusters(cfgPath string, f clusterListFlags, stdout, stderr io.Writer) error {
	if err := checkOutput(*f.output); err != nil {
		return err
	}
	cfg, st, err := openState(cfgPath)
	if err != nil {
		return err
	}
	ctx, cancel := stateContext()
	defer cancel()
	infos, err := st.ClusterInfos(ctx)
	if err != nil {
		return err
	}
	live, src := readLive(cfg, f.metricsURL)
	if src.Error != "" {
		fmt.Fprintf(stderr, "agents and health are unknown: %s\n", src.Error)
	}
	out := clusterList{list: listOf("ClusterList", []clusterItem{}), Live: src}
	for _, c := range infos {
		item := clusterItem{ClusterInfo: c}
		if live != nil {
			lc := live[c.ID]
			item.Agents, item.Ready = lc.Agents, &lc.Ready
			if item.Agents == nil {
				item.Agents = []stub.LiveAgent{}
			}
		}
		out.Items = append(out.Items, item)
	}
	if *f.output != outputTable {
		return printObject(stdout, *f.output, out)
	}
	if len(out.Items) == 0 {
		fmt.Fprintln(stderr, "No clusters registered: `stub register CLUSTER-ID` registers one.")
		return nil
	}
	now := time.Now()
	rows := [][]string{{"NAME", "LABELS", "AGE", "SECRET-AGE", "SECRET-EXPIRES", "AGENTS", "READY"}}
	for _, c := range out.Items {
		agents, ready := "<unknown>", "Unknown"
		if c.Ready != nil {
			var ids []string
			for _, a := range c.Agents {
				ids = append(ids, a.ID)
			}
			agents, ready = joinOr(ids, "<none>"), "False"
			if *c.Ready {
				ready = "True"
			}
		}
		rows = append(rows, []string{c.ID, labelString(c.Labels), age(now, c.Registered), age(now, c.SecretIssued), expiry(now, c.SecretExpires), agents, ready})
	}
	return printTable(stdout, rows)
}

// readLive asks the running stub for its agents and health: at url, or
// at the metrics the config serves. A nil map means unknown, and the
// source says why.
func readLive(cfg config.Stub, url string) (map[string]stub.LiveCluster, liveSource) {
	if url == "" {
		url = stub.MetricsURL(cfg)
	}
	if url == "" {
		return nil, liveSource{Error: "the config sets no metrics.listen, where the running stub tells them (set it, e.g. 127.0.0.1:9090, or pass --metrics-url)"}
	}
	ctx, cancel := context.WithTimeout(context.Background(), liveTimeout)
	defer cancel()
	live, err := stub.ReadLive(ctx, &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}, url)
	if err != nil {
		var hint string
		if errors.Is(err, context.DeadlineExceeded) {
			hint = fmt.Sprintf(" (no answer within %v)", liveTimeout)
		}
		return nil, liveSource{MetricsURL: url, Error: fmt.Sprintf("no running stub answered at %s: %v%s; is it running here? (--metrics-url picks another)", url, err, hint)}
	}
	return live, liveSource{MetricsURL: url}
}

func newRotateSecretCmd(o rootOpts, stdout, stderr io.Writer) *cobra.Command {
	var (
		f          secretFlags
		disconnect bool
	)
	cmd := &cobra.Command{
		Use:   "rotate-secret CLUSTER-ID",
		Short: "Issue a new join secret for a cluster and print its agent manifest",
		Long: `Rotate-secret issues a new join secret for a registered cluster (as
"stub register CLUSTER-ID --rotate" does) and prints the agent manifest with it.
From now on handshakes must use the new secret. Agents already connected keep
their sessions while you roll the new Secret out, unless --disconnect (a leaked
secret): then every stub closes the old secret's sessions within seconds, and
the cluster is offline until its agents have the new one. Labels and the
registration stay.`,
		Example: `  stub clusters rotate-secret prod > prod-agent.yaml
  kubectl --context prod apply -f prod-agent.yaml

  # A leaked secret: close the old one's sessions too
  stub clusters rotate-secret prod --disconnect --secret-out prod.secret > prod-agent.yaml`,
		Args:              cli.ExactArgs("CLUSTER-ID"),
		ValidArgsFunction: completeClusters(o),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.checkOutput(cmd); err != nil {
				return err
			}
			return rotateSecret(o.configPath(), args[0], f, disconnect, stdout, stderr)
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVar(&disconnect, "disconnect", false, "also close the sessions the old secret opened (a leaked secret)")
	return cmd
}

func rotateSecret(cfgPath, id string, f secretFlags, disconnect bool, stdout, stderr io.Writer) error {
	expires, err := parseExpiry("--expires", f.expires)
	if err != nil {
		return err
	}
	cfg, st, err := openState(cfgPath)
	if err != nil {
		return err
	}
	note := fmt.Sprintf("new join secret for cluster %q: handshakes must use it from now on; sessions of the old one stay up.", id)
	if disconnect {
		note = fmt.Sprintf("new join secret for cluster %q: the old secret's sessions are closed within %v, so the cluster is offline until its agents have the new one.", id, tunnel.SessionCheckInterval)
	}
	f.cfgPath = cfgPath
	return issueSecret(cfg, id, f, true, stdout, stderr, func() (string, error) {
		ctx, cancel := stateContext()
		defer cancel()
		secret, err := st.Rotate(ctx, id, stub.RotateOptions{Disconnect: disconnect, Expires: expires})
		if errors.Is(err, stub.ErrClusterNotFound) {
			return "", fmt.Errorf("cluster %q is not registered (`stub clusters` lists them; `stub register %s` registers it)", id, id)
		}
		return secret, err
	}, note)
}
