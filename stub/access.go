package stub

import (
	"context"
	"sync"

	"go.uber.org/zap"

	"github.com/keyhole-dev/keyhole/authn"
	"github.com/keyhole-dev/keyhole/config"
	"github.com/keyhole-dev/keyhole/internal/statefile"
	"github.com/keyhole-dev/keyhole/policy"
	"github.com/keyhole-dev/keyhole/web"
)

// access is what a config reload replaces: who callers are, and where they
// may go. Listeners, TLS, the hub and the state directory need a restart.
type access struct {
	auth   *authn.Chain
	pol    *policy.Policy
	logins []web.Login // authentication.jwt[].login.browser
	// jwt is the authentication.jwt list it was built from (for the
	// landing page's kubeconfig download).
	jwt []authn.JWTAuthenticatorConfig
}

// buildAccess makes the access of cfg; static tokens come from the state.
func buildAccess(cfg config.Stub, tokens authn.StaticTokens) (*access, error) {
	pol, err := cfg.BuildPolicy()
	if err != nil {
		return nil, err
	}
	a := &access{auth: &authn.Chain{Static: tokens}, pol: pol, jwt: cfg.Authentication.JWT}
	if len(cfg.Authentication.JWT) > 0 {
		j, err := authn.NewJWT(cfg.Authentication.JWT)
		if err != nil {
			return nil, err
		}
		a.auth.JWT = j
		if a.logins, err = web.LoginsFrom("authentication.jwt", cfg.Authentication.JWT); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// liveAccess serves the current access, re-reading the config file (at
// most once a second, on use) so that issuers and policy change without
// dropping tunnels or open streams. A broken edit keeps the previous access
// and is logged once; the fix is logged once too. It implements
// proxy.Authenticator and proxy.Policy.
type liveAccess struct {
	file   *statefile.File[*access] // nil without a config file
	static *access
	log    *zap.Logger

	mu      sync.Mutex
	lastErr string
}

// newLiveAccess starts from first; with a config file (path), parse turns
// the file's new contents into the config whose access replaces it.
func newLiveAccess(path string, parse func(data []byte) (config.Stub, error), first *access, tokens authn.StaticTokens, log *zap.Logger) (*liveAccess, error) {
	l := &liveAccess{static: first, log: log}
	if path == "" {
		return l, nil
	}
	f, err := statefile.Open(path, func(data []byte) (*access, error) {
		cfg, err := parse(data)
		if err != nil {
			return nil, err
		}
		return buildAccess(cfg, tokens)
	})
	if err != nil {
		return nil, err
	}
	l.file = f
	return l, nil
}

func (l *liveAccess) current() *access {
	if l.file == nil {
		return l.static
	}
	a := l.file.Get()
	msg := ""
	if err := l.file.Err(); err != nil {
		msg = err.Error()
	}
	l.mu.Lock()
	if msg != l.lastErr {
		if msg != "" {
			l.log.Error("config change not applied; the previous authentication and policy stay in force", zap.String("error", msg))
		} else {
			l.log.Info("config reloaded: authentication and policy")
		}
		l.lastErr = msg
	}
	l.mu.Unlock()
	return a
}

// close stops the background work (issuer discovery) of the access in
// force and of the first one; an access replaced by a reload is stopped
// when it is collected (authn.NewJWT), since requests may still hold it.
func (l *liveAccess) close() {
	for _, a := range []*access{l.static, l.currentQuiet()} {
		if a != nil && a.auth.JWT != nil {
			a.auth.JWT.Close()
		}
	}
}

// currentQuiet is the access in force, without re-reading or logging.
func (l *liveAccess) currentQuiet() *access {
	if l.file == nil {
		return nil
	}
	return l.file.Get()
}

// Authenticate implements proxy.Authenticator.
func (l *liveAccess) Authenticate(ctx context.Context, token string) (*authn.User, error) {
	return l.current().auth.Authenticate(ctx, token)
}

// Allowed implements proxy.Policy.
func (l *liveAccess) Allowed(u *authn.User, cluster string, labels map[string]string) bool {
	return l.current().pol.Allowed(u, cluster, labels)
}

// inForce is the access in force, without logging: the config file's
// (re-read at most once a second), or without a file the first one.
func (l *liveAccess) inForce() *access {
	if a := l.currentQuiet(); a != nil {
		return a
	}
	return l.static
}

// BrowserLogins are the browser sign-ins of the current config (web.Logins).
func (l *liveAccess) BrowserLogins() []web.Login { return l.inForce().logins }

// JWT is the authentication.jwt list of the current config.
func (l *liveAccess) JWT() []authn.JWTAuthenticatorConfig { return l.inForce().jwt }
