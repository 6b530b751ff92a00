package main

import (
	"context"
	"sync"

	"go.uber.org/zap"

	"github.com/keyhole-dev/keyhole/authn"
	"github.com/keyhole-dev/keyhole/config"
	"github.com/keyhole-dev/keyhole/internal/statefile"
	"github.com/keyhole-dev/keyhole/policy"
)

// access is what a config reload replaces: who callers are, and where they
// may go. Listeners, TLS and the state directory need a restart.
type access struct {
	auth *authn.Chain
	pol  *policy.Policy
}

func buildAccess(cfg config.Stub, tokens *authn.TokenFile) (*access, error) {
	pol, err := cfg.BuildPolicy()
	if err != nil {
		return nil, err
	}
	a := &access{auth: &authn.Chain{Static: tokens}, pol: pol}
	if len(cfg.Authentication.JWT) > 0 {
		j, err := authn.NewJWT(cfg.Authentication.JWT)
		if err != nil {
			return nil, err
		}
		a.auth.JWT = j
	}
	return a, nil
}

// live serves the current access, re-reading the config file (at most once
// a second) so that issuers and policy change without dropping tunnels or
// open streams. A broken edit keeps the previous access and is logged once.
type live struct {
	file   *statefile.File[*access] // nil without a config file
	static *access
	log    *zap.Logger

	mu      sync.Mutex
	lastErr string
}

func newLive(cfgPath string, env config.Env, first *access, tokens *authn.TokenFile, log *zap.Logger) (*live, error) {
	l := &live{static: first, log: log}
	if cfgPath == "" {
		return l, nil
	}
	f, err := statefile.Open(cfgPath, func(data []byte) (*access, error) {
		cfg, err := config.ParseStub(cfgPath, data, env)
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

func (l *live) current() *access {
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

func (l *live) Authenticate(ctx context.Context, token string) (*authn.User, error) {
	return l.current().auth.Authenticate(ctx, token)
}

func (l *live) Allowed(u *authn.User, cluster string, labels map[string]string) bool {
	return l.current().pol.Allowed(u, cluster, labels)
}
