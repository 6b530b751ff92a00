package main

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/keyhole-dev/keyhole/cmd/internal/cli"
	"github.com/keyhole-dev/keyhole/stub"
)

func newTokensCmd(o rootOpts, stdout, stderr io.Writer) *cobra.Command {
	var lf, llf tokenListFlags // the group's own flags, and list's
	cmd := &cobra.Command{
		Use:   "tokens",
		Short: "List, revoke and expire static tokens (with no subcommand: list)",
		Long: `Tokens administers the static tokens that "stub kubeconfig --user" mints. The
state keeps only their SHA-256; these commands never show a token or its hash.
A token is named by its ID: 12 hex digits derived from the hash, shown by
"stub tokens list" and in the note "stub kubeconfig" prints.

Revoking or expiring a token takes effect at once on every stub (with a hub,
through its shared Secret): requests with it are refused, and its open
watches, logs -f and exec sessions end within the stub's
streams.recheckInterval.`,
		Example: `  stub tokens
  stub tokens list --user alice@example.com -o yaml
  stub tokens revoke 3f9a0c1d2e4b
  stub tokens revoke --user alice@example.com
  stub tokens expire 3f9a0c1d2e4b --in 24h`,
		Args: cli.SubcommandOrNoArgs,
		RunE: func(*cobra.Command, []string) error { return listTokens(o.configPath(), lf, stdout, stderr) },
	}
	lf.add(cmd)
	list := &cobra.Command{
		Use:   "list",
		Short: "List static tokens: ID, user, groups, the clusters they reach, created, expires",
		Long: `List shows each static token: its ID, user and groups, the registered clusters
the config's policy lets it reach (clusters whose agents verify callers take
no static token), when it was minted (unknown for tokens minted by hand) and
when it expires. Never the token or its hash.`,
		Example: `  stub tokens list
  stub tokens list --user alice@example.com
  stub tokens list -o json`,
		Aliases: []string{"ls"},
		Args:    cli.ExactArgs(),
		RunE:    func(*cobra.Command, []string) error { return listTokens(o.configPath(), llf, stdout, stderr) },
	}
	llf.add(list)
	cmd.AddCommand(list, newTokensRevokeCmd(o, stderr), newTokensExpireCmd(o, stderr))
	return cmd
}

// tokenListFlags are the flags of `stub tokens [list]`.
type tokenListFlags struct {
	output *string
	user   string
}

func (f *tokenListFlags) add(cmd *cobra.Command) {
	f.output = addOutputFlag(cmd)
	cmd.Flags().StringVar(&f.user, "user", "", "only this user's tokens")
}

// tokenItem is a token as `stub tokens list -o json|yaml` prints it.
type tokenItem struct {
	stub.TokenInfo
	Clusters []string `json:"clusters"`
}

func listTokens(cfgPath string, f tokenListFlags, stdout, stderr io.Writer) error {
	if err := checkOutput(*f.output); err != nil {
		return err
	}
	cfg, st, err := openState(cfgPath)
	if err != nil {
		return err
	}
	ctx, cancel := stateContext()
	defer cancel()
	tokens, err := st.TokenInfos(ctx)
	if err != nil {
		return err
	}
	clusters, err := st.ClusterInfos(ctx)
	if err != nil {
		return err
	}
	reach, err := stub.StaticTokenReach(cfg, clusters)
	if err != nil {
		return err
	}
	items := []tokenItem{}
	for _, t := range tokens {
		if f.user == "" || t.User == f.user {
			items = append(items, tokenItem{TokenInfo: t, Clusters: orEmpty(reach(t.User, t.Groups))})
		}
	}
	if *f.output != outputTable {
		return printObject(stdout, *f.output, listOf("StaticTokenList", items))
	}
	if len(items) == 0 {
		fmt.Fprintln(stderr, "No static tokens found.")
		return nil
	}
	now := time.Now()
	rows := [][]string{{"ID", "USER", "GROUPS", "CLUSTERS", "CREATED", "EXPIRES"}}
	for _, t := range items {
		created := "<unknown>"
		if t.Created != nil {
			created = age(now, *t.Created)
		}
		rows = append(rows, []string{t.ID, t.User, joinOr(t.Groups, "<none>"), joinOr(t.Clusters, "<none>"), created, expiry(now, t.Expires)})
	}
	return printTable(stdout, rows)
}

func newTokensRevokeCmd(o rootOpts, stderr io.Writer) *cobra.Command {
	var user string
	cmd := &cobra.Command{
		Use:   "revoke (ID... | --user NAME)",
		Short: "Revoke static tokens by ID, or every token of a user; their open streams end",
		Long: `Revoke removes static tokens: the ones with the IDs given ("stub tokens list"
shows them), or with --user every token of that user. Requests with them are
refused at once on every stub, and their open watches, logs -f and exec
sessions end within the stub's streams.recheckInterval (5 s by default).

If an ID matches no token, nothing is revoked. OIDC users are revoked at
their IdP, or dropped from the policy.`,
		Example: `  # One token
  stub tokens revoke 3f9a0c1d2e4b

  # Every token of a user (also spelt "stub revoke --user")
  stub tokens revoke --user alice@example.com`,
		ValidArgsFunction: completeTokens(o),
		RunE: func(cmd *cobra.Command, ids []string) error {
			switch {
			case (len(ids) > 0) == (user != ""):
				return cli.Usage(cmd, errors.New("name the tokens to revoke: their IDs, or --user NAME for every token of a user"))
			case user != "":
				return revokeUser(o.configPath(), user, stderr)
			}
			return revokeIDs(o.configPath(), ids, stderr)
		},
	}
	cmd.Flags().StringVar(&user, "user", "", "revoke every static token of the user `NAME` (as given to \"stub kubeconfig --user\")")
	return cmd
}

// newRevokeCmd is `stub revoke --user NAME`, the spelling before `stub
// tokens revoke`, kept as it was.
func newRevokeCmd(o rootOpts, stderr io.Writer) *cobra.Command {
	var user string
	cmd := &cobra.Command{
		Use:   "revoke --user NAME",
		Short: `Revoke every static token of a user (same as "stub tokens revoke --user")`,
		Long: `Revoke removes every static token of a user, as "stub tokens revoke --user"
does: requests with them are refused at once, and their open streams end
within the stub's streams.recheckInterval.`,
		Example: "  stub revoke --user alice@example.com",
		Args:    cli.ExactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if user == "" {
				return cli.Usage(cmd, errors.New("--user is required: the user whose static tokens to revoke"))
			}
			return revokeUser(o.configPath(), user, stderr)
		},
	}
	cmd.Flags().StringVar(&user, "user", "", "the user `NAME` whose static tokens to revoke (as given to \"stub kubeconfig --user\")")
	return cmd
}

// revokeUser removes every static token of user.
func revokeUser(cfgPath, user string, stderr io.Writer) error {
	_, st, err := openState(cfgPath)
	if err != nil {
		return err
	}
	ctx, cancel := stateContext()
	defer cancel()
	n, err := st.RevokeTokens(ctx, user)
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("user %q has no static token (OIDC users are revoked at their IdP, or dropped from the policy)", user)
	}
	fmt.Fprintf(stderr, "revoked %d static token(s) of %q: refused from now on; their open streams end within the stub's streams.recheckInterval.\n", n, user)
	return nil
}

// revokeIDs removes the static tokens with ids.
func revokeIDs(cfgPath string, ids []string, stderr io.Writer) error {
	for _, id := range ids {
		if err := checkTokenID(id); err != nil {
			return err
		}
	}
	_, st, err := openState(cfgPath)
	if err != nil {
		return err
	}
	ctx, cancel := stateContext()
	defer cancel()
	removed, err := st.RevokeTokenIDs(ctx, slices.Compact(slices.Sorted(slices.Values(ids))))
	if errors.Is(err, stub.ErrTokenNotFound) {
		return fmt.Errorf("%w; nothing was revoked", err)
	} else if err != nil {
		return err
	}
	for _, t := range removed {
		fmt.Fprintf(stderr, "revoked static token %s of %q: refused from now on; its open streams end within the stub's streams.recheckInterval.\n", t.ID, t.User)
	}
	return nil
}

// checkTokenID refuses what cannot be a token ID, and says so kindly when
// it looks like a token.
func checkTokenID(id string) error {
	switch {
	case stub.ValidTokenID(id):
		return nil
	case strings.HasPrefix(id, "khu_"):
		return errors.New("that is a token, not a token ID: name it by the ID `stub tokens list` shows (and treat the token as leaked if it was shared)")
	}
	return fmt.Errorf("token ID %q: want the %d lower-case hex digits `stub tokens list` shows in its ID column", id, stub.TokenIDLength)
}

func newTokensExpireCmd(o rootOpts, stderr io.Writer) *cobra.Command {
	var (
		in time.Duration
		at string
	)
	cmd := &cobra.Command{
		Use:   "expire ID (--in DURATION | --at TIME)",
		Short: "Set when a static token expires",
		Long: `Expire sets a static token's expiry, sooner or later than it was: from then on
requests with it are refused, and the streams it opened end within the stub's
streams.recheckInterval (a stream keeps the expiry it was admitted with when
that came first). To end a token now, revoke it.`,
		Example: `  # Expire in a day
  stub tokens expire 3f9a0c1d2e4b --in 24h

  # Expire at a given time (RFC 3339)
  stub tokens expire 3f9a0c1d2e4b --at 2027-01-31T18:00:00Z`,
		Args:              cli.ExactArgs("ID"),
		ValidArgsFunction: completeTokens(o),
		RunE: func(cmd *cobra.Command, args []string) error {
			end, err := expireAt(cmd, in, at, time.Now())
			if err != nil {
				return err
			}
			return expireToken(o.configPath(), args[0], end, stderr)
		},
	}
	cmd.Flags().DurationVar(&in, "in", 0, "expire this long from now, e.g. 24h")
	cmd.Flags().StringVar(&at, "at", "", "expire at this time, RFC 3339 (e.g. 2027-01-31T18:00:00Z)")
	cmd.MarkFlagsMutuallyExclusive("in", "at")
	cmd.MarkFlagsOneRequired("in", "at")
	return cmd
}

// expireAt is the expiry --in or --at says.
func expireAt(cmd *cobra.Command, in time.Duration, at string, now time.Time) (time.Time, error) {
	if cmd.Flags().Changed("in") {
		if in <= 0 {
			return time.Time{}, fmt.Errorf("--in %v: must be positive, e.g. 24h; to end the token now, use `stub tokens revoke ID`", in)
		}
		return now.Add(in), nil
	}
	t, err := time.Parse(time.RFC3339, at)
	if err != nil {
		return time.Time{}, fmt.Errorf("--at %q: want an RFC 3339 time such as %s", at, now.Add(24*time.Hour).UTC().Truncate(time.Second).Format(time.RFC3339))
	}
	if !t.After(now) {
		return time.Time{}, fmt.Errorf("--at %q: that is not in the future; to end the token now, use `stub tokens revoke ID`", at)
	}
	return t, nil
}

func expireToken(cfgPath, id string, at time.Time, stderr io.Writer) error {
	if err := checkTokenID(id); err != nil {
		return err
	}
	_, st, err := openState(cfgPath)
	if err != nil {
		return err
	}
	ctx, cancel := stateContext()
	defer cancel()
	t, err := st.ExpireToken(ctx, id, at)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "static token %s of %q now expires at %s (in %s): refused from then on; its open streams end within the stub's streams.recheckInterval after.\n",
		t.ID, t.User, t.Expires.Format(time.RFC3339), time.Until(*t.Expires).Round(time.Second))
	return nil
}
