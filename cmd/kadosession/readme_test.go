package main

import (
	"bytes"
	"os"
	"regexp"
	"testing"
)

// TestREADMENamesEveryServeFlag: every flag `kadosession serve --help`
// lists is named in README.md (its flags table, or the section about it:
// TLS, metrics),
// so an operator reading README finds every knob the binary has.
func TestREADMENamesEveryServeFlag(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var help bytes.Buffer
	_ = serve([]string{"--help"}, &help)
	flags := regexp.MustCompile(`(?m)^  -([a-z][a-z0-9-]*)`).FindAllSubmatch(help.Bytes(), -1)
	if len(flags) < 20 {
		t.Fatalf("found %d flags in serve --help; the pattern no longer matches its output:\n%s", len(flags), help.String())
	}
	for _, f := range flags {
		named := regexp.MustCompile(`--` + regexp.QuoteMeta(string(f[1])) + `([^a-z0-9-]|$)`)
		if !named.Match(readme) {
			t.Errorf("README.md does not name serve's --%s", f[1])
		}
	}
}
