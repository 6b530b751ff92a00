package tunnel

import (
	"errors"
	"fmt"
	"maps"
	"net/url"
	"unicode"
	"unicode/utf8"
)

// Bounds on an agent's attributes (AgentConfig.Attributes). The tunnel
// carries them on the handshake, stores them with the session and lists them
// in AgentInfo; what they mean is for the packages built on it to say.
const (
	// MaxAttributes is how many attributes one agent may state.
	MaxAttributes = 16
	// MaxAttributeValueLen bounds a value, in bytes. A key is a DNS label
	// (lower-case letters, digits and '-', at most 63 characters), like a
	// cluster ID.
	MaxAttributeValueLen = 256
	// maxAttributesHeader bounds the encoded header: MaxAttributes pairs of
	// a 63-byte key and a value escaped to three bytes per byte, with
	// separators, fit in it.
	maxAttributesHeader = 16 << 10
)

// ErrAttributes wraps every reason an agent's attributes are refused.
var ErrAttributes = errors.New("agent attributes out of bounds")

// checkAttributes reports why m breaks the bounds above, or nil.
func checkAttributes(m map[string]string) error {
	if len(m) > MaxAttributes {
		return fmt.Errorf("%w: %d attributes, at most %d", ErrAttributes, len(m), MaxAttributes)
	}
	for k, v := range m {
		if !idPattern.MatchString(k) {
			return fmt.Errorf("%w: key %q must be a DNS label (lower-case letters, digits, '-', at most 63)", ErrAttributes, k)
		}
		if len(v) > MaxAttributeValueLen {
			return fmt.Errorf("%w: value of %q has %d bytes, at most %d", ErrAttributes, k, len(v), MaxAttributeValueLen)
		}
		if !printable(v) {
			return fmt.Errorf("%w: value of %q must be printable UTF-8", ErrAttributes, k)
		}
	}
	return nil
}

func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// encodeAttributes is HeaderAttributes' value for m: form encoding
// (k=v&k2=v2), keys sorted. m must have passed checkAttributes.
func encodeAttributes(m map[string]string) string {
	v := url.Values{}
	for k, x := range m {
		v.Set(k, x)
	}
	return v.Encode()
}

// parseAttributes reads HeaderAttributes' value; "" is no attributes (nil).
// A key given twice, bad escaping or anything out of bounds is an error
// wrapping ErrAttributes.
func parseAttributes(h string) (map[string]string, error) {
	if h == "" {
		return nil, nil
	}
	if len(h) > maxAttributesHeader {
		return nil, fmt.Errorf("%w: %s has %d bytes, at most %d", ErrAttributes, HeaderAttributes, len(h), maxAttributesHeader)
	}
	q, err := url.ParseQuery(h)
	if err != nil {
		return nil, fmt.Errorf("%w: %s is not form-encoded: %v", ErrAttributes, HeaderAttributes, err)
	}
	m := make(map[string]string, len(q))
	for k, vs := range q {
		if len(vs) != 1 {
			return nil, fmt.Errorf("%w: key %q given %d times", ErrAttributes, k, len(vs))
		}
		m[k] = vs[0]
	}
	if err := checkAttributes(m); err != nil {
		return nil, err
	}
	return m, nil
}

// cloneAttributes copies m so that no caller shares a session's map.
func cloneAttributes(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	return maps.Clone(m)
}
