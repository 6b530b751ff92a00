// Package authn decides who is calling the stub.
//
// A caller proves who it is with a bearer token, which Chain sends one of
// two ways:
//   - a JWT (three dot-separated parts) goes to the OIDC issuer it names
//     (JWT: Kubernetes' own JWT authenticator, configured by an
//     AuthenticationConfiguration jwt list with kube-apiserver's meaning:
//     signature, issuer, audience, expiry, CEL validation rules, claims or
//     CEL to a user, distributed groups claims);
//   - anything else is a static token ("khu_…"), matched by MatchToken
//     against a list of SHA-256 hashes in constant time over every entry.
//     The list itself is the stub's state (package stub keeps it, re-reads
//     it when it changes and mints the tokens).
//
// Either way the result is a User: a name and groups, exactly what the
// agent later turns into Impersonate-* headers. Names and groups under the
// reserved "system:" prefix are refused (ValidateIdentity), so no token can
// ever stand for a Kubernetes system identity.
//
// Tokens are never logged; only their owner's name is.
package authn
