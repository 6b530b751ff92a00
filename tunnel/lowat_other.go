//go:build !linux

package tunnel

import "syscall"

// setSockLowat does nothing where TCP_NOTSENT_LOWAT is not set this way;
// see lowat_linux.go.
func setSockLowat(string, string, syscall.RawConn) error { return nil }
