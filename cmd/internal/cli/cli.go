// Package cli holds the command-line manners that cmd/stub and cmd/agent
// share on top of cobra: errors that say what to type instead, Go-style
// single-dash long flags (-config) accepted as the flag package accepted
// them, argument checks that print the usage, and output formats.
package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// UsageError is a mistake on the command line: its message is followed by
// where to read how the command is used.
type UsageError struct {
	Err  error
	Hint string // e.g. "See 'stub register --help' for usage."
}

func (e *UsageError) Error() string { return e.Err.Error() + "\n" + e.Hint }
func (e *UsageError) Unwrap() error { return e.Err }

// Usage wraps err as a UsageError of cmd.
func Usage(cmd *cobra.Command, err error) error {
	return &UsageError{Err: err, Hint: fmt.Sprintf("Usage: %s\nSee '%s --help' for examples.", cmd.UseLine(), cmd.CommandPath())}
}

// Setup gives root and its subcommands the shared manners: errors are
// returned to main (which prints them once), usage is printed only when
// asked for, flag mistakes point at --help, and --version prints the bare
// version as `version` does.
func Setup(root *cobra.Command, stdout, stderr io.Writer) {
	root.SilenceErrors, root.SilenceUsage = true, true
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		if strings.Contains(err.Error(), "time: ") {
			err = fmt.Errorf("%w: write a duration such as 90s, 30m or 720h (there is no d: 30 days are 720h)", err)
		}
		return &UsageError{Err: err, Hint: fmt.Sprintf("See '%s --help' for usage.", cmd.CommandPath())}
	})
	if root.Version != "" {
		root.SetVersionTemplate("{{.Version}}\n")
	}
}

// Execute runs root with args (single-dash long flags normalized first,
// see NormalizeArgs) and returns its error, with a hint added to cobra's
// own unknown-command errors.
func Execute(root *cobra.Command, args []string) error {
	// cobra's completion command, added now rather than in ExecuteC, so
	// that it too refuses an unknown shell instead of printing its help.
	root.InitDefaultCompletionCmd(args...)
	var strict func(c *cobra.Command)
	strict = func(c *cobra.Command) {
		switch {
		case !c.HasParent() || !c.HasSubCommands():
		case !c.Runnable(): // a group: cobra would print its help for any word
			c.Args, c.RunE = SubcommandOrNoArgs, func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
		case c.Args == nil:
			c.Args = SubcommandOrNoArgs
		}
		for _, sub := range c.Commands() {
			strict(sub)
		}
	}
	strict(root)
	root.SetArgs(NormalizeArgs(root, args))
	cmd, err := root.ExecuteC()
	var ue *UsageError
	if err != nil && !errors.As(err, &ue) && strings.HasPrefix(err.Error(), "unknown command") {
		return &UsageError{Err: errors.New(strings.TrimRight(err.Error(), "\n")), Hint: fmt.Sprintf("Run '%s --help' for the commands.", cmd.CommandPath())}
	}
	return err
}

// ExactArgs accepts exactly the positional arguments named (e.g.
// "CLUSTER-ID"); otherwise it says what was expected, what came, and the
// usage.
func ExactArgs(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) == len(names) {
			return nil
		}
		want := "no argument"
		if len(names) > 0 {
			want = strings.Join(names, " ")
		}
		got := "none"
		if len(args) > 0 {
			got = fmt.Sprintf("%q", args)
		}
		return Usage(cmd, fmt.Errorf("%s takes %s; got %s", cmd.CommandPath(), want, got))
	}
}

// SubcommandOrNoArgs is Args for a command that runs on its own and has
// subcommands (stub clusters): an argument is a mistyped subcommand, for
// which cobra's suggestions are offered.
func SubcommandOrNoArgs(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += "\n\nDid you mean this?\n\t" + strings.Join(s, "\n\t")
	}
	return &UsageError{Err: errors.New(msg), Hint: fmt.Sprintf("Run '%s --help' for the commands.", cmd.CommandPath())}
}

// NormalizeArgs rewrites Go-style single-dash long flags (-config FILE,
// -user=alice), which the flag package accepted and pflag reads as
// shorthand clusters, to their double-dash form, for every long flag
// defined anywhere in root's tree. Flag values, shorthand flags (-o json),
// and everything after "--" are left as they are.
func NormalizeArgs(root *cobra.Command, args []string) []string {
	long := map[string]bool{"help": false, "version": false} // name → takes a separate value
	short := map[string]bool{"h": false}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		add := func(f *pflag.Flag) {
			long[f.Name] = f.NoOptDefVal == ""
			if f.Shorthand != "" {
				short[f.Shorthand] = f.NoOptDefVal == ""
			}
		}
		c.LocalFlags().VisitAll(add)
		c.PersistentFlags().VisitAll(add)
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	out := slices.Clone(args)
	for i := 0; i < len(out); i++ {
		a := out[i]
		if a == "--" {
			break
		}
		if len(a) < 2 || a[0] != '-' {
			continue
		}
		name, _, inline := strings.Cut(strings.TrimLeft(a, "-"), "=")
		switch {
		case strings.HasPrefix(a, "--"):
			if long[name] && !inline {
				i++ // its value
			}
		case len(name) > 1:
			if _, ok := long[name]; ok {
				out[i] = "-" + a
				if long[name] && !inline {
					i++
				}
			}
		default:
			if short[name] && !inline {
				i++
			}
		}
	}
	return out
}

// Main runs a command's run function and exits: status 1 with the error
// on stderr after prefix, 0 otherwise.
func Main(prefix string, run func() error) {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, prefix+":", err)
		os.Exit(1)
	}
}
