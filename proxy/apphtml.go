package proxy

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"io"

	"golang.org/x/net/html"
	"golang.org/x/net/html/atom"
)

// urlAttrs are the attributes of each tag whose URLs kube-apiserver's
// proxy rewrites in HTML (k8s.io/apimachinery/pkg/util/proxy, transport.go
// atomsToAttrs, v0.33): the ones whose rewriting appResponse undoes.
var urlAttrs = map[atom.Atom][]string{
	atom.A: {"href"}, atom.Applet: {"codebase"}, atom.Area: {"href"}, atom.Audio: {"src"}, atom.Base: {"href"},
	atom.Blockquote: {"cite"}, atom.Body: {"background"}, atom.Button: {"formaction"}, atom.Command: {"icon"},
	atom.Del: {"cite"}, atom.Embed: {"src"}, atom.Form: {"action"}, atom.Frame: {"longdesc", "src"},
	atom.Head: {"profile"}, atom.Html: {"manifest"}, atom.Iframe: {"longdesc", "src"},
	atom.Img: {"longdesc", "src", "usemap"}, atom.Input: {"src", "usemap", "formaction"}, atom.Ins: {"cite"},
	atom.Link: {"href"}, atom.Object: {"classid", "codebase", "data", "usemap"}, atom.Q: {"cite"},
	atom.Script: {"src"}, atom.Source: {"src"}, atom.Video: {"poster", "src"},
}

// rewriteHTMLLinks rewrites, with fix, the URL attributes of an HTML body
// encoded with enc ("", "gzip" or "deflate") and returns it encoded the
// same way, and whether anything changed. A body that does not hold
// marker is not parsed. Tags are written back as the tokenizer reads
// them, as the API server's rewriting does; everything else byte for
// byte.
func rewriteHTMLLinks(body []byte, enc string, fix func(string) string, marker string) ([]byte, bool, error) {
	plain := body
	switch enc {
	case "gzip":
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err != nil {
			return nil, false, err
		}
		if plain, err = io.ReadAll(io.LimitReader(zr, maxHTMLRewrite+1)); err != nil {
			return nil, false, err
		}
	case "deflate":
		var err error
		if plain, err = io.ReadAll(io.LimitReader(flate.NewReader(bytes.NewReader(body)), maxHTMLRewrite+1)); err != nil {
			return nil, false, err
		}
	}
	if len(plain) > maxHTMLRewrite || !bytes.Contains(plain, []byte(marker)) {
		return body, false, nil
	}
	var out bytes.Buffer
	changed := false
	z := html.NewTokenizer(bytes.NewReader(plain))
	for {
		tt := z.Next()
		if tt == html.ErrorToken {
			if z.Err() != io.EOF {
				return nil, false, z.Err()
			}
			break
		}
		if tt != html.StartTagToken && tt != html.SelfClosingTagToken {
			out.Write(z.Raw())
			continue
		}
		raw := append([]byte(nil), z.Raw()...)
		tok := z.Token()
		attrs, ok := urlAttrs[tok.DataAtom]
		edited := false
		if ok {
			for i, a := range tok.Attr {
				for _, name := range attrs {
					if a.Namespace == "" && a.Key == name {
						if v := fix(a.Val); v != a.Val {
							tok.Attr[i].Val, edited = v, true
						}
					}
				}
			}
		}
		if edited {
			out.WriteString(tok.String())
			changed = true
		} else {
			out.Write(raw)
		}
	}
	if !changed {
		return body, false, nil
	}
	switch enc {
	case "gzip":
		var b bytes.Buffer
		zw := gzip.NewWriter(&b)
		_, _ = zw.Write(out.Bytes())
		if err := zw.Close(); err != nil {
			return nil, false, err
		}
		return b.Bytes(), true, nil
	case "deflate":
		var b bytes.Buffer
		fw, _ := flate.NewWriter(&b, flate.DefaultCompression)
		_, _ = fw.Write(out.Bytes())
		if err := fw.Close(); err != nil {
			return nil, false, err
		}
		return b.Bytes(), true, nil
	}
	return out.Bytes(), true, nil
}
