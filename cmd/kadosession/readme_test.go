package main

import (
	"os"
	"os/exec"
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
	// The usage asked for goes to stdout (it can be paged and searched).
	help, err := exec.Command(binary(t), "serve", "--help").Output()
	if err != nil {
		t.Fatalf("serve --help: %v", err)
	}
	flags := regexp.MustCompile(`(?m)^  -([a-z][a-z0-9-]*)`).FindAllSubmatch(help, -1)
	if len(flags) < 20 {
		t.Fatalf("found %d flags in serve --help on stdout; the pattern no longer matches its output:\n%s", len(flags), help)
	}
	for _, f := range flags {
		named := regexp.MustCompile(`--` + regexp.QuoteMeta(string(f[1])) + `([^a-z0-9-]|$)`)
		if !named.Match(readme) {
			t.Errorf("README.md does not name serve's --%s", f[1])
		}
	}
}
