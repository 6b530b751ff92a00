package web

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.uber.org/zap"
	"golang.org/x/oauth2"

	"github.com/keyhole-dev/keyhole/authn"
	"github.com/keyhole-dev/keyhole/internal/kubestatus"
)

// refresh redeems h's refresh token once across replicas: it claims the
// record's Lease by compare-and-swap, waits while another replica holds
// it, and returns early when another one has refreshed already. Within a
// process, Current's single flight makes it the only caller per session.
// Its errors are *apierrors.StatusError (401: the session has ended; 503:
// try again).
func (s *Sessions) refresh(ctx context.Context, h *handle) (string, error) {
	for {
		rec, err := s.cfg.Store.GetSession(ctx, h.name, true)
		if err != nil {
			if ctx.Err() != nil {
				return "", kubestatus.ServiceUnavailable("the browser session's refresh took too long; try again")
			}
			s.log.Error("browser session record not read", zap.Error(err))
			return "", kubestatus.ServiceUnavailable("the browser session cannot be read now; try again")
		}
		if st := s.stands(rec, h); st != nil {
			return "", st
		}
		if token, ok, err := s.valid(h, rec); err != nil {
			return "", s.unauthorized("does not match its record")
		} else if ok { // refreshed by another replica
			return token, nil
		}
		now := s.cfg.Now()
		if l := rec.Lease; l != nil && l.Holder != s.holder && now.Before(l.Until) {
			select { // another replica is redeeming the token: wait for it
			case <-ctx.Done():
				return s.fallback(h, rec, "another replica's refresh of it did not finish")
			case <-time.After(s.pollEvery):
			}
			continue
		}
		rec.Lease = &Lease{Holder: s.holder, Until: now.Add(s.leaseFor)}
		if err := s.cfg.Store.UpdateSession(ctx, h.name, rec); errors.Is(err, ErrConflict) {
			continue
		} else if err != nil {
			s.log.Error("browser session lease not written", zap.Error(err))
			return "", kubestatus.ServiceUnavailable("the browser session cannot be refreshed now; try again")
		}
		// Read it back: the lease is ours, and rec has the store's version.
		if rec, err = s.cfg.Store.GetSession(ctx, h.name, true); err != nil || rec == nil || rec.Lease == nil || rec.Lease.Holder != s.holder {
			continue
		}
		return s.redeem(ctx, h, rec)
	}
}

// fallback is what a refresh that could not happen answers: the current
// ID token while it is still valid, else a 401.
func (s *Sessions) fallback(h *handle, rec *Record, why string) (string, error) {
	if s.cfg.Now().Before(rec.IDTokenExpires) {
		if t, err := openRecordTokens(h, rec); err == nil {
			return t.ID, nil
		}
	}
	return "", s.unauthorized("could not be refreshed (" + why + ")")
}

// redeem redeems the refresh token of rec, whose lease this Sessions
// holds, and stores the new tokens.
func (s *Sessions) redeem(ctx context.Context, h *handle, rec *Record) (string, error) {
	old, err := openRecordTokens(h, rec)
	if err != nil {
		return "", s.endSession(ctx, h, rec.User, "the cookie does not open its record")
	}
	if old.Refresh == "" {
		return "", s.endSession(ctx, h, rec.User, "its ID token expired and the IdP gave no refresh token (ask for the offline_access scope)")
	}
	l, ok := s.login(rec.Issuer)
	if !ok {
		return "", s.endSession(ctx, h, rec.User, "its issuer no longer has login.browser")
	}
	release := func(why string) (string, error) {
		rec.Lease = nil
		if err := s.cfg.Store.UpdateSession(ctx, h.name, rec); err != nil && !errors.Is(err, ErrConflict) {
			s.log.Warn("browser session lease not released", zap.Error(err))
		}
		return s.fallback(h, rec, why)
	}
	p, err := s.provider(ctx, l)
	if err != nil {
		s.log.Warn("browser session not refreshed", zap.Error(err))
		return release("the IdP cannot be reached")
	}
	src := s.oauth2Config(l, p).TokenSource(clientContext(ctx, p), &oauth2.Token{RefreshToken: old.Refresh, Expiry: time.Unix(1, 0)})
	tok, err := src.Token()
	if err != nil {
		if re, ok := errors.AsType[*oauth2.RetrieveError](err); ok && re.ErrorCode == "invalid_grant" {
			return "", s.endSession(ctx, h, rec.User, "the IdP refused its refresh token ("+re.ErrorCode+")")
		}
		s.log.Warn("browser session not refreshed", zap.String("issuer", l.IssuerURL), zap.Error(err))
		return release("the IdP did not answer the refresh")
	}
	idToken, _ := tok.Extra("id_token").(string)
	if idToken == "" {
		return "", s.endSession(ctx, h, rec.User, "the IdP's refresh gave no ID token")
	}
	user, err := s.cfg.Auth.Authenticate(ctx, idToken)
	switch {
	case err != nil:
		return "", s.endSession(ctx, h, rec.User, "the refreshed ID token is not accepted: "+err.Error())
	case user.Name != rec.User:
		return "", s.endSession(ctx, h, rec.User, fmt.Sprintf("the refreshed ID token names %q", user.Name))
	case !slices.Contains(authn.TokenAudiences(idToken), l.ClientID):
		return "", s.endSession(ctx, h, rec.User, fmt.Sprintf("the refreshed ID token is not for client %q", l.ClientID))
	}
	refreshToken := tok.RefreshToken
	if refreshToken == "" {
		refreshToken = old.Refresh // the IdP does not rotate them
	}
	plain, _ := json.Marshal(tokens{ID: idToken, Refresh: refreshToken})
	sealed, err := sealRecord(h.c.RK, h.name, plain)
	if err != nil {
		return "", err
	}
	exp := authn.CredentialExpiry(idToken, user)
	if exp.IsZero() {
		exp = rec.Expires
	}
	// Store the new tokens. The lease outlives the request to the IdP, so
	// no other replica wrote meanwhile; a conflict means a sign-out (or a
	// store that moved the version): read again and decide.
	for range 5 {
		rec.Sealed, rec.IDTokenExpires, rec.Lease = sealed, exp, nil
		err = s.cfg.Store.UpdateSession(ctx, h.name, rec)
		if !errors.Is(err, ErrConflict) {
			break
		}
		if rec, err = s.cfg.Store.GetSession(ctx, h.name, true); err != nil {
			break
		}
		if rec == nil { // signed out meanwhile: the new refresh token is nobody's
			_ = s.revoke(ctx, l, p, refreshToken)
			return "", s.unauthorized("has ended (signed out)")
		}
	}
	if err != nil {
		// The IdP has rotated the refresh token: without it, the session
		// cannot be refreshed again. Serve this token while it lasts.
		s.log.Error("refreshed browser session not stored", zap.Error(err))
	}
	return idToken, nil
}
