// Package config is the schema of the stub's and the agent's configuration
// files: one versioned YAML document each, read in four steps:
//
//  1. defaults (DefaultStub, DefaultAgent): the values this package owns;
//  2. a strict decode over them (an unknown or misspelt key is an error);
//  3. Complete(env): values derived from other keys or from the process's
//     surroundings, which it is given as an Env value (only cmd/* calls
//     DiscoverEnv; tests write an Env literal);
//  4. Validate: pure, and reports every problem at once, each naming the
//     key, the value and the fix.
//
// Parsing is thus a function of the file and the Env. A zero tunnel or hub
// timing value means the default of the package that owns it (tunnel, ha),
// applied by that package's constructor; Validate checks only the values
// given. Secrets are never values here, only paths of files that hold them.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// APIVersion is the version every config file must declare.
const APIVersion = "keyhole.dev/v1alpha1"

// Duration is a time.Duration written as "5s" or "1m30s".
type Duration struct{ time.Duration }

// UnmarshalJSON accepts a Go duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration string such as \"5s\", got %s", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("want a duration such as \"5s\", got %q", s)
	}
	d.Duration = v
	return nil
}

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

var (
	unknownField = regexp.MustCompile(`unknown field "([^"]+)"`)
	typeError    = regexp.MustCompile(`cannot unmarshal (\w+) into Go struct field \w+\.(\S+) of type (\S+)`)
)

// decode reads one strict YAML document of the given kind into v (a pointer
// to a struct already holding defaults).
func decode(path string, data []byte, kind string, v any) error {
	var head struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := yaml.Unmarshal(data, &head); err != nil {
		return fmt.Errorf("config %s: not valid YAML: %v", path, err)
	}
	if head.APIVersion != APIVersion || head.Kind != kind {
		return fmt.Errorf("config %s: apiVersion %q, kind %q: this file must start with\n  apiVersion: %s\n  kind: %s", path, head.APIVersion, head.Kind, APIVersion, kind)
	}
	if err := yaml.UnmarshalStrict(data, v); err != nil {
		msg := err.Error()
		var tree any
		_ = yaml.Unmarshal(data, &tree)
		where := locate(reflect.TypeOf(v).Elem(), tree, "")
		if m := unknownField.FindStringSubmatch(msg); m != nil {
			key := m[1]
			if where.unknown != "" {
				key = where.unknown
			}
			return fmt.Errorf("config %s: unknown key %q: check its spelling; the keys of %s are %s", path, key, kind, strings.Join(jsonKeys(reflect.TypeOf(v).Elem(), ""), ", "))
		}
		if where.duration != "" {
			return fmt.Errorf("config %s: key %q: %s is not a duration; write one such as \"5s\", \"1m30s\" or \"2h\"", path, where.duration, where.value)
		}
		if m := typeError.FindStringSubmatch(msg); m != nil {
			return fmt.Errorf("config %s: key %q: got a %s, want a %s", path, m[2], m[1], m[3])
		}
		if i := strings.LastIndex(msg, "json: "); i >= 0 {
			msg = msg[i+len("json: "):]
		}
		return fmt.Errorf("config %s: %s", path, msg)
	}
	return nil
}

// found is what locate found wrong in a decoded YAML tree: the dotted path
// of the first unknown key, or of the first value that is not a duration
// where one is wanted (with that value, quoted).
type found struct{ unknown, duration, value string }

// locate walks tree (YAML decoded into maps and slices) along struct type t
// and names the first key t does not have, or the first Duration field
// whose value does not parse: the strict decoder's errors give neither the
// path of a nested key nor, for a Duration, any key at all.
func locate(t reflect.Type, tree any, prefix string) found {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch node := tree.(type) {
	case map[string]any:
		if t.Kind() == reflect.Map {
			for k, v := range node {
				if f := locate(t.Elem(), v, prefix+k+"."); f != (found{}) {
					return f
				}
			}
			return found{}
		}
		if t.Kind() != reflect.Struct {
			return found{}
		}
		fields := fieldsOf(t)
		for _, k := range sortedKeys(node) {
			ft, ok := fields[k]
			switch {
			case !ok:
				return found{unknown: prefix + k}
			case ft == reflect.TypeOf(Duration{}):
				if str, isStr := node[k].(string); !isStr || !validDuration(str) {
					return found{duration: prefix + k, value: fmt.Sprintf("%q", fmt.Sprint(node[k]))}
				}
			default:
				if f := locate(ft, node[k], prefix+k+"."); f != (found{}) {
					return f
				}
			}
		}
	case []any:
		if t.Kind() == reflect.Slice {
			for i, v := range node {
				if f := locate(t.Elem(), v, fmt.Sprintf("%s[%d].", strings.TrimSuffix(prefix, "."), i)); f != (found{}) {
					return f
				}
			}
		}
	}
	return found{}
}

// fieldsOf maps the JSON names of struct t's fields to their types,
// promoted ones too unless a field of t itself has the name (as
// encoding/json does).
func fieldsOf(t reflect.Type) map[string]reflect.Type {
	out, promoted := map[string]reflect.Type{}, map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		switch {
		case f.Anonymous && name == "" && ft.Kind() == reflect.Struct:
			for k, v := range fieldsOf(ft) {
				promoted[k] = v
			}
		case name != "" && name != "-":
			out[name] = f.Type
		}
	}
	for k, v := range promoted {
		if _, own := out[k]; !own {
			out[k] = v
		}
	}
	return out
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func validDuration(s string) bool {
	_, err := time.ParseDuration(s)
	return err == nil
}

// jsonKeys lists the dotted keys of struct type t.
func jsonKeys(t reflect.Type, prefix string) []string {
	var out []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		ft := f.Type
		if f.Anonymous && name == "" && ft.Kind() == reflect.Struct {
			out = append(out, jsonKeys(ft, prefix)...) // promoted, as encoding/json does
			continue
		}
		if name == "" || name == "-" {
			continue
		}
		if ft.Kind() == reflect.Struct && ft != reflect.TypeOf(Duration{}) {
			out = append(out, jsonKeys(ft, prefix+name+".")...)
			continue
		}
		out = append(out, prefix+name)
	}
	sort.Strings(out)
	return out
}

// readFile reads path; "" means "no file" (embedded defaults).
func readFile(path string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w (give --config the path of a %s file, or leave it out for the defaults)", err, APIVersion)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, fmt.Errorf("config %s: file is empty", path)
	}
	return data, nil
}

// problems collects validation errors.
type problems []error

func (p *problems) addf(format string, a ...any) { *p = append(*p, fmt.Errorf(format, a...)) }
func (p problems) err() error                    { return errors.Join(p...) }

// invalid names the file (or the defaults) in front of Validate's problems.
func invalid(path string, err error) error {
	if err == nil {
		return nil
	}
	where := "defaults"
	if path != "" {
		where = path
	}
	return fmt.Errorf("config %s is not valid:\n%w", where, err)
}

func errorf(format string, a ...any) error { return fmt.Errorf(format, a...) }
