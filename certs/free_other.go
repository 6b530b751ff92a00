//go:build !unix

package certs

// freeBytes is unknown here; the store's own errors still apply.
func freeBytes(string) (uint64, bool) { return 0, false }
