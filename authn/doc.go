// Package authn decides who is calling the stub.
//
// Today a caller proves who it is with a static bearer token. The stub keeps
// only the SHA-256 of each token, in a YAML file it re-reads when it changes
// (so adding or revoking a token needs no restart), compares hashes in
// constant time over every entry, and maps the token to a User: a name and
// groups, exactly what the agent later turns into Impersonate-* headers.
// Names and groups under the reserved "system:" prefix are refused at load,
// so no static token can ever stand for a Kubernetes system identity.
//
// Tokens are never logged; only their owner's name is.
package authn
