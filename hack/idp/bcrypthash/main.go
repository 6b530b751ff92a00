// Command bcrypthash prints the bcrypt hash of each line read from stdin, one
// hash per line, for Dex's staticPasswords[].hash (internal/idptest writes
// Dex's configuration at test time, and the main module has no bcrypt).
// Passwords come on stdin so that they never appear in a process listing.
//
//	printf '%s\n' secret1 secret2 | bcrypthash [-cost 10]
//
// Dex refuses hashes whose cost is below bcrypt.DefaultCost (10), so that is
// the default and the minimum that makes sense.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"

	"golang.org/x/crypto/bcrypt"
)

func main() {
	cost := flag.Int("cost", bcrypt.DefaultCost, "bcrypt cost (Dex accepts 10 to 16)")
	flag.Parse()
	if flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: bcrypthash [-cost N] < passwords (one per line)")
		os.Exit(2)
	}
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 0, 4096), 1<<20)
	out := bufio.NewWriter(os.Stdout)
	for in.Scan() {
		h, err := bcrypt.GenerateFromPassword(in.Bytes(), *cost)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bcrypthash:", err)
			os.Exit(1)
		}
		fmt.Fprintf(out, "%s\n", h)
	}
	if err := in.Err(); err != nil {
		fmt.Fprintln(os.Stderr, "bcrypthash:", err)
		os.Exit(1)
	}
	if err := out.Flush(); err != nil {
		fmt.Fprintln(os.Stderr, "bcrypthash:", err)
		os.Exit(1)
	}
}
