package idptest

import (
	"net"
	"path/filepath"

	"github.com/keyhole-dev/keyhole/internal/testbed"
)

// writePKI writes Dir/pki: a throw-away CA (ca.crt, also in CAData) and
// Dex's serving certificate for 127.0.0.1 and localhost (tls.crt, tls.key).
func (d *Dex) writePKI() (certFile, keyFile string, err error) {
	ca, err := testbed.NewCA("idptest-ca")
	if err != nil {
		return "", "", err
	}
	certPEM, keyPEM, err := ca.Issue("dex", nil, true, []net.IP{net.ParseIP("127.0.0.1")}, []string{"localhost"})
	if err != nil {
		return "", "", err
	}

	d.CAData = ca.CertPEM
	pki := filepath.Dir(d.CAFile)
	certFile, keyFile = filepath.Join(pki, "tls.crt"), filepath.Join(pki, "tls.key")
	for _, f := range []struct {
		path string
		data []byte
	}{
		{d.CAFile, d.CAData},
		{certFile, certPEM},
		{keyFile, keyPEM},
	} {
		if err := writeFile(f.path, f.data); err != nil {
			return "", "", err
		}
	}
	return certFile, keyFile, nil
}
