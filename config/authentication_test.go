package config

import (
	"os"
	"strings"
	"testing"
)

// pasted is a jwt list as a cluster runs it (the example of Kubernetes'
// AuthenticationConfiguration documentation, every key used), plus
// Keyhole's certificateAuthorityFile and login.
const pasted = `  jwt:
  - issuer:
      url: https://example.com
      discoveryURL: https://discovery.example.com/.well-known/openid-configuration
      certificateAuthorityFile: /etc/keyhole/idp-ca.pem
      audiences: [my-app, my-other-app]
      audienceMatchPolicy: MatchAny
    claimValidationRules:
    - expression: 'claims.hd == "example.com"'
      message: the hd claim must be set to example.com
    - expression: 'claims.exp - claims.nbf <= 86400'
      message: total token lifetime must not exceed 24 hours
    - claim: tenant
      requiredValue: acme
    claimMappings:
      username:
        expression: 'claims.username + ":external-user"'
      groups:
        expression: 'claims.roles.split(",")'
      uid:
        expression: 'claims.sub'
      extra:
      - key: example.com/tenant
        valueExpression: 'claims.tenant'
    userValidationRules:
    - expression: "!user.username.startsWith('system:')"
      message: 'username cannot used reserved system: prefix'
    - expression: "user.groups.all(group, !group.startsWith('system:'))"
      message: 'groups cannot used reserved system: prefix'
    login: {clientID: my-app}
`

const agentHead = "apiVersion: keyhole.dev/v1alpha1\nkind: AgentConfig\nstubURL: https://kh.example.com\ncluster: c1\n"

func TestAuthenticationIsKubernetes(t *testing.T) {
	if _, err := LoadStub(write(t, head+"authentication:\n"+pasted), noEnv); err != nil {
		t.Fatalf("stub: %v", err)
	}
	if _, err := LoadAgent(write(t, agentHead+"callerVerification:\n"+pasted), noEnv); err != nil {
		t.Fatalf("agent: %v", err)
	}
	entry := func(body string) string {
		return head + "authentication:\n  jwt:\n  - issuer: {url: https://idp.example.com, audiences: [keyhole]}\n" + body
	}
	cases := map[string]struct {
		body string
		want []string
	}{
		"claimRules": {entry("    claimMappings:\n      username: {claim: sub, prefix: \"github:\"}\n    claimRules:\n    - match: {repository: acme/deploy, ref: refs/heads/main}\n      groups: [deployers]\n"),
			[]string{"authentication.jwt[0].claimRules: removed", "claimMappings.groups.expression",
				`expression: '(claims.?ref.orValue("") == "refs/heads/main" && claims.?repository.orValue("") == "acme/deploy" ? ["deployers"] : [])'`}},
		"prefix required": {entry("    claimMappings:\n      username: {claim: email}\n"),
			[]string{"authentication.jwt[0].claimMappings.username.prefix: Required value: prefix is required when claim is set. It can be set to an empty string to disable prefixing"}},
		"two audiences": {strings.Replace(entry("    claimMappings:\n      username: {claim: sub, prefix: \"\"}\n"), "[keyhole]", "[keyhole, other]", 1),
			[]string{`authentication.jwt[0].issuer.audienceMatchPolicy: Invalid value: "": audienceMatchPolicy must be MatchAny for multiple audiences`}},
		"bad CEL": {entry("    claimMappings:\n      username: {expression: 'claims.sub +'}\n"),
			[]string{"authentication.jwt[0].claimMappings.username.expression: Invalid value: \"claims.sub +\": compilation failed"}},
		"misspelt key": {entry("    claimMapping:\n      username: {claim: sub, prefix: \"\"}\n"), []string{`unknown key "authentication.jwt[0].claimMapping"`}},
		"twice": {entry("    claimMappings: {username: {claim: sub, prefix: \"\"}}\n  - issuer: {url: https://idp.example.com, audiences: [x]}\n    claimMappings: {username: {claim: sub, prefix: \"\"}}\n"),
			[]string{`authentication.jwt[1].issuer.url: Duplicate value: "https://idp.example.com"`}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := LoadStub(write(t, tc.body), noEnv)
			for _, w := range tc.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
	_, err := LoadAgent(write(t, agentHead+"callerVerification:\n  jwt:\n  - issuer: {url: https://idp.example.com, audiences: [keyhole]}\n    claimMappings: {username: {claim: sub}}\n"), noEnv)
	if err == nil || !strings.Contains(err.Error(), "callerVerification.jwt[0].claimMappings.username.prefix: Required value") {
		t.Fatalf("agent: %v", err)
	}
}

// The configs of docs/authentication.md are valid as they stand.
func TestAuthenticationDocsExamples(t *testing.T) {
	b, err := os.ReadFile("../docs/authentication.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := strings.Split(string(b), "```yaml\n")[1:]
	n := 0
	for _, blk := range blocks {
		blk = blk[:strings.Index(blk, "```")]
		var err error
		switch {
		case strings.HasPrefix(blk, "authentication:\n"):
			_, err = ParseStub("docs", []byte(head+blk), noEnv)
		case strings.HasPrefix(blk, "# agent.yaml\ncallerVerification:"):
			_, err = LoadAgent(write(t, agentHead+blk), noEnv)
		default:
			continue
		}
		n++
		if err != nil {
			t.Errorf("%v\n%s", err, blk)
		}
	}
	if n < 4 {
		t.Fatalf("found %d authentication examples", n)
	}
}
