package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/util/duration"
	"sigs.k8s.io/yaml"
)

// Output formats of the listing commands, as kubectl's -o.
const (
	outputTable = "table"
	outputJSON  = "json"
	outputYAML  = "yaml"
)

// addOutputFlag adds -o/--output to cmd.
func addOutputFlag(cmd *cobra.Command) *string {
	p := cmd.Flags().StringP("output", "o", outputTable, "output format: table, json or yaml")
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{outputTable, outputJSON, outputYAML}, cobra.ShellCompDirectiveNoFileComp))
	return p
}

func checkOutput(format string) error {
	switch format {
	case outputTable, outputJSON, outputYAML:
		return nil
	}
	return fmt.Errorf("--output %q: use table, json or yaml (e.g. -o yaml)", format)
}

// list is what -o json|yaml prints for a listing: a versioned list, as
// kubectl prints one.
type list[T any] struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Items      []T    `json:"items"`
}

const outputAPIVersion = "keyhole.dev/v1alpha1"

func listOf[T any](kind string, items []T) list[T] {
	return list[T]{APIVersion: outputAPIVersion, Kind: kind, Items: items}
}

// printObject prints v as JSON (indented as kubectl does) or YAML.
func printObject(w io.Writer, format string, v any) error {
	b, err := json.MarshalIndent(v, "", "    ")
	if err != nil {
		return err
	}
	if format == outputYAML {
		if b, err = yaml.JSONToYAML(b); err != nil {
			return err
		}
	} else {
		b = append(b, '\n')
	}
	_, err = w.Write(b)
	return err
}

// printTable prints rows (the first is the header) in aligned columns.
func printTable(w io.Writer, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 6, 4, 3, ' ', 0)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// age is how long ago t was, as kubectl's AGE column says it.
func age(now, t time.Time) string {
	if t.IsZero() {
		return "<unknown>"
	}
	return duration.HumanDuration(now.Sub(t))
}

// expiry says when t (nil: never) ends, from now.
func expiry(now time.Time, t *time.Time) string {
	switch {
	case t == nil:
		return "<never>"
	case t.After(now):
		return "in " + duration.HumanDuration(t.Sub(now))
	}
	return "expired " + duration.HumanDuration(now.Sub(*t)) + " ago"
}

func joinOr(s []string, none string) string {
	if len(s) == 0 {
		return none
	}
	return strings.Join(s, ",")
}

func labelString(l map[string]string) string {
	var kv []string
	for _, k := range slices.Sorted(maps.Keys(l)) {
		kv = append(kv, k+"="+l[k])
	}
	return joinOr(kv, "<none>")
}

// orEmpty makes a nil list print as [] rather than null.
func orEmpty(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// Completions of cluster IDs and token IDs from the state, for the shell.

func noCompletion(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return nil, cobra.ShellCompDirectiveNoFileComp
}

func completeClusters(o rootOpts) cobra.CompletionFunc {
	return func(_ *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		_, st, err := openState(o.configPath())
		if err != nil {
			return nil, cobra.ShellCompDirectiveError
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		cs, err := st.ClusterInfos(ctx)
		if err != nil {
			return nil, cobra.ShellCompDirectiveError
		}
		var ids []string
		for _, c := range cs {
			ids = append(ids, c.ID)
		}
		return ids, cobra.ShellCompDirectiveNoFileComp
	}
}

func completeTokens(o rootOpts) cobra.CompletionFunc {
	return func(_ *cobra.Command, _ []string, _ string) ([]string, cobra.ShellCompDirective) {
		_, st, err := openState(o.configPath())
		if err != nil {
			return nil, cobra.ShellCompDirectiveError
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ts, err := st.TokenInfos(ctx)
		if err != nil {
			return nil, cobra.ShellCompDirectiveError
		}
		var ids []string
		for _, t := range ts {
			ids = append(ids, t.ID+"\t"+t.User) // the shell shows the user beside the ID
		}
		return ids, cobra.ShellCompDirectiveNoFileComp
	}
}
