package cli

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// tree is a small command tree with the kinds of flags the binaries have.
func tree() *cobra.Command {
	root := &cobra.Command{Use: "stub", RunE: func(*cobra.Command, []string) error { return nil }}
	root.PersistentFlags().String("config", "", "")
	reg := &cobra.Command{Use: "register ID", Args: ExactArgs("ID"), RunE: func(*cobra.Command, []string) error { return nil }}
	reg.Flags().Bool("rotate", false, "")
	reg.Flags().StringArray("label", nil, "")
	reg.Flags().StringP("output", "o", "table", "")
	reg.Flags().StringArray("login-arg", nil, "")
	root.AddCommand(reg)
	return root
}

func TestNormalizeArgs(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"register x -config c.yaml", "register x --config c.yaml"},
		{"-config=c.yaml register x", "--config=c.yaml register x"},
		{"register -rotate x -label a=b", "register --rotate x --label a=b"},
		{"register -rotate=true x", "register --rotate=true x"},
		// A value that looks like a long flag stays a value.
		{"register x --label -config", "register x --label -config"},
		{"register x -label -rotate", "register x --label -rotate"},
		{"register x --login-arg=-config", "register x --login-arg=-config"},
		// Shorthands and their values, unknown words, and anything after --.
		{"register x -o json", "register x -o json"},
		{"register x -ojson -h", "register x -ojson -h"},
		{"register x -nosuch", "register x -nosuch"},
		{"register x -- -config", "register x -- -config"},
		{"-help", "--help"},
		{"-version", "--version"},
	} {
		got := strings.Join(NormalizeArgs(tree(), strings.Fields(tc.in)), " ")
		if got != tc.want {
			t.Errorf("%q: got %q, want %q", tc.in, got, tc.want)
		}
	}
	in := []string{"-config", "x"}
	_ = NormalizeArgs(tree(), in)
	if !slices.Equal(in, []string{"-config", "x"}) {
		t.Errorf("NormalizeArgs changed its input: %q", in)
	}
}

// Mistakes on the command line say what was wrong and where the usage is.
func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"regster", "x"}, []string{`unknown command "regster" for "stub"`, "Did you mean this?\n\tregister", "Run 'stub --help'"}},
		{[]string{"register"}, []string{"stub register takes ID; got none", "Usage: stub register ID [flags]", "See 'stub register --help'"}},
		{[]string{"register", "a", "b"}, []string{`stub register takes ID; got ["a" "b"]`}},
		{[]string{"register", "a", "--nosuch"}, []string{"unknown flag: --nosuch", "See 'stub register --help' for usage."}},
		{[]string{"register", "a", "-config"}, []string{"flag needs an argument: --config"}},
	} {
		root := tree()
		Setup(root, &strings.Builder{}, &strings.Builder{})
		err := Execute(root, tc.args)
		var ue *UsageError
		if !errors.As(err, &ue) {
			t.Errorf("%q: %v (%T), want a UsageError", tc.args, err, err)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%q: %q, want it to say %q", tc.args, err, w)
			}
		}
	}
}
