package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
)

// envName is the environment variable that may set a flag: KADOSESSION_
// followed by the flag's name in upper case with '-' as '_'.
func envName(flagName string) string {
	return "KADOSESSION_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseFlags parses args, then fills every flag not given on the command
// line from its environment variable. A bad value from either place is an
// error that names its source.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (flags start with --; see --help)", fs.Arg(0))
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || err != nil {
			return
		}
		if v, ok := os.LookupEnv(envName(f.Name)); ok {
			if serr := fs.Set(f.Name, v); serr != nil {
				err = fmt.Errorf("environment variable %s=%q: %v", envName(f.Name), v, serr)
			}
		}
	})
	return err
}

// usageWithEnv prints a flag set's usage noting the environment variables.
func usageWithEnv(fs *flag.FlagSet, synopsis, about string) func() {
	return func() {
		out := fs.Output()
		fmt.Fprintf(out, "Usage: %s\n\n%s\n\nFlags (each also read from KADOSESSION_<FLAG>, e.g. %s):\n", synopsis, about, envName("listen"))
		fs.PrintDefaults()
	}
}
