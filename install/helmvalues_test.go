package install

import (
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/keyhole-dev/keyhole/config"
)

// These tests read the Helm charts (install/helm) as files; e2e/helm_test.go
// renders them with the real helm, compares the objects with the kustomize
// bases and AgentManifest, and installs them into a real API server.

const testCA = "-----BEGIN CERTIFICATE-----\nMIIBdummy\n-----END CERTIFICATE-----\n"

func TestAgentHelmValues(t *testing.T) {
	digest := "sha256:" + strings.Repeat("ab", 32)
	var three int32 = 3
	for _, tc := range []struct {
		name   string
		p      AgentParams
		want   AgentChartValues
		header string
	}{
		{"tag and CA", AgentParams{Cluster: "prod", StubURL: "https://keyhole.example.com", StubCAPEM: []byte(testCA), JoinSecret: "khj_x", Image: "ghcr.io/keyhole-dev/keyhole-agent:v0.1.0"},
			AgentChartValues{Cluster: "prod", StubURL: "https://keyhole.example.com", JoinSecret: "khj_x", StubCA: testCA,
				Image: AgentChartImage{Repository: "ghcr.io/keyhole-dev/keyhole-agent", Tag: "v0.1.0"}},
			"-n keyhole-system --create-namespace"},
		{"registry with a port, no tag, namespace, replicas", AgentParams{Cluster: "c", StubURL: "https://s", JoinSecret: "j", Image: "reg.local:5000/keyhole-agent", Namespace: "kh", Replicas: 3},
			AgentChartValues{Cluster: "c", StubURL: "https://s", JoinSecret: "j", Image: AgentChartImage{Repository: "reg.local:5000/keyhole-agent", Tag: "latest"}, Replicas: &three},
			"-n kh --create-namespace"},
		{"digest", AgentParams{Cluster: "c", StubURL: "https://s", JoinSecret: "j", Image: "reg.local:5000/a/b@" + digest},
			AgentChartValues{Cluster: "c", StubURL: "https://s", JoinSecret: "j", Image: AgentChartImage{Repository: "reg.local:5000/a/b", Digest: digest}},
			"-n keyhole-system"},
		{"tag and digest", AgentParams{Cluster: "c", StubURL: "https://s", JoinSecret: "j", Image: "a/b:v1@" + digest},
			AgentChartValues{Cluster: "c", StubURL: "https://s", JoinSecret: "j", Image: AgentChartImage{Repository: "a/b", Tag: "v1", Digest: digest}},
			"-n keyhole-system"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := AgentHelmValues(tc.p)
			if err != nil {
				t.Fatal(err)
			}
			var got AgentChartValues
			if err := yaml.UnmarshalStrict(out, &got); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("values %+v, want %+v\n%s", got, tc.want, out)
			}
			if !strings.Contains(string(out), "helm install keyhole-agent install/helm/keyhole-agent "+tc.header) {
				t.Errorf("header lacks the install command with %q:\n%s", tc.header, out)
			}
			// Every key is one the chart's schema knows.
			var m map[string]any
			if err := yaml.Unmarshal(out, &m); err != nil {
				t.Fatal(err)
			}
			props := schemaProps(t, "keyhole-agent", "")
			for k := range m {
				if _, ok := props[k]; !ok {
					t.Errorf("key %q is not in the chart's values.schema.json", k)
				}
			}
			for k := range m["image"].(map[string]any) {
				if _, ok := schemaProps(t, "keyhole-agent", "image")[k]; !ok {
					t.Errorf("key image.%s is not in the chart's values.schema.json", k)
				}
			}
		})
	}
}

func TestAgentHelmValuesErrors(t *testing.T) {
	ok := AgentParams{Cluster: "c", StubURL: "https://s", JoinSecret: "j", Image: "a/b:v1"}
	for _, tc := range []struct {
		name string
		edit func(*AgentParams)
		want string
	}{
		{"nothing", func(p *AgentParams) { *p = AgentParams{} }, "need a cluster ID, the stub URL, the join secret, an image"},
		{"no secret", func(p *AgentParams) { p.JoinSecret = "" }, "Helm values need the join secret"},
		{"bad digest", func(p *AgentParams) { p.Image = "a/b@md5:00" }, `image "a/b@md5:00": want REPOSITORY@sha256:DIGEST`},
		{"empty tag", func(p *AgentParams) { p.Image = "a/b:" }, `image "a/b:": want REPOSITORY[:TAG]`},
		{"no repository", func(p *AgentParams) { p.Image = ":v1" }, `image ":v1": want REPOSITORY[:TAG]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := ok
			tc.edit(&p)
			out, err := AgentHelmValues(p)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q (output %q)", err, tc.want, out)
			}
		})
	}
}

// schemaProps returns the properties of the chart's values.schema.json at
// key ("" for the top level), and fails unless that level is strict
// (additionalProperties false).
func schemaProps(t *testing.T, chart, key string) map[string]json.RawMessage {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("helm", chart, "values.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	type level struct {
		AdditionalProperties *bool                      `json:"additionalProperties"`
		Properties           map[string]json.RawMessage `json:"properties"`
	}
	var top level
	if err := json.Unmarshal(data, &top); err != nil {
		t.Fatalf("%s/values.schema.json: %v", chart, err)
	}
	l := top
	if key != "" {
		l = level{}
		if err := json.Unmarshal(top.Properties[key], &l); err != nil {
			t.Fatalf("%s/values.schema.json %s: %v", chart, key, err)
		}
	}
	if l.AdditionalProperties == nil || *l.AdditionalProperties {
		t.Errorf("%s/values.schema.json %q: additionalProperties is not false: misspelt keys would pass", chart, key)
	}
	return l.Properties
}

// jsonKeys are the JSON names of a config struct's fields.
func jsonKeys(v any) []string {
	var keys []string
	rt := reflect.TypeOf(v)
	for i := range rt.NumField() {
		name, _, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
		if name != "" && name != "-" {
			keys = append(keys, name)
		}
	}
	return slices.Sorted(slices.Values(keys))
}

// The charts' schemas list the config keys the stub and the agent know,
// no more and no fewer, so a key new to config.Stub or config.Agent cannot
// be refused by the chart, and a misspelt one is refused before the install.
func TestHelmSchemaConfigKeys(t *testing.T) {
	if got, want := slices.Sorted(maps.Keys(schemaProps(t, "keyhole-stub", "config"))), jsonKeys(config.Stub{}); !slices.Equal(got, want) {
		t.Errorf("keyhole-stub schema config keys %v, config.Stub has %v", got, want)
	}
	// The agent chart sets these itself (the Deployment's mounts and port
	// depend on them); agentID would be one ID for every replica, and a
	// kubeconfig (and its context) has no place in a pod, which uses its
	// ServiceAccount.
	notInValues := []string{"apiVersion", "kind", "stubURL", "cluster", "joinSecretFile", "stubCAFile", "healthListen", "agentID", "kubeconfig", "context"}
	var want []string
	for _, k := range jsonKeys(config.Agent{}) {
		if !slices.Contains(notInValues, k) {
			want = append(want, k)
		}
	}
	if got := slices.Sorted(maps.Keys(schemaProps(t, "keyhole-agent", "config"))); !slices.Equal(got, want) {
		t.Errorf("keyhole-agent schema config keys %v, want config.Agent's but the chart's own: %v", got, want)
	}
}

// Every key of values.yaml is in the schema, and every key of the schema
// is in values.yaml (documented there), at the top level and one below.
func TestHelmValuesMatchSchema(t *testing.T) {
	for _, chart := range []string{"keyhole-stub", "keyhole-agent"} {
		t.Run(chart, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("helm", chart, "values.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			var values map[string]any
			if err := yaml.Unmarshal(data, &values); err != nil {
				t.Fatal(err)
			}
			props := schemaProps(t, chart, "")
			delete(props, "global") // Helm's, for subcharts
			if got, want := slices.Sorted(maps.Keys(values)), slices.Sorted(maps.Keys(props)); !slices.Equal(got, want) {
				t.Errorf("values.yaml keys %v, schema properties %v", got, want)
			}
			for k, v := range values {
				sub, ok := v.(map[string]any)
				if !ok || k == "config" || len(sub) == 0 {
					continue // config: the stub's and agent's own keys (above)
				}
				got, want := slices.Sorted(maps.Keys(sub)), slices.Sorted(maps.Keys(schemaProps(t, chart, k)))
				if k == "resources" { // Kubernetes' type: values.yaml shows some of its keys
					for _, g := range got {
						if !slices.Contains(want, g) {
							t.Errorf("values.yaml resources.%s is not in the schema", g)
						}
					}
					continue
				}
				if !slices.Equal(got, want) {
					t.Errorf("values.yaml %s keys %v, schema properties %v", k, got, want)
				}
			}
		})
	}
}
