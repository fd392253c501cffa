package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// envName is the environment variable that may set a flag: KADOSESSION_
// followed by the flag's name in upper case with '-' as '_'.
func envName(flagName string) string {
	return "KADOSESSION_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseFlags parses args, then fills every flag not given on the command
// line from its environment variable. A bad value from either place is an
// error that names its source.
//
// The usage is printed only when asked for (--help): after a mistake, the
// error alone, saying what the flag wants, is easier to find than above
// sixty lines of usage.
func parseFlags(fs *flag.FlagSet, args []string) error {
	usage, out := fs.Usage, fs.Output()
	fs.Usage = func() {}
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	fs.Usage = usage
	fs.SetOutput(out)
	if errors.Is(err, flag.ErrHelp) {
		// Asked for: to stdout, so that it can be paged or searched.
		fs.SetOutput(os.Stdout)
		usage()
		fs.SetOutput(out)
		return err
	}
	if err != nil {
		return fmt.Errorf("%v (see --help)", explainFlagError(fs, err))
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (flags start with --; see --help)", fs.Arg(0))
	}
	given := setFlags(fs)
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || err != nil || !fromEnv(fs, f) {
			return
		}
		if v, ok := os.LookupEnv(envName(f.Name)); ok {
			if serr := fs.Set(f.Name, v); serr != nil {
				err = fmt.Errorf("environment variable %s=%q: %v", envName(f.Name), v, wants(f, serr))
			}
		}
	})
	return err
}

// setFlags names the flags of fs that were set, on the command line or
// (after parseFlags) from the environment.
func setFlags(fs *flag.FlagSet) map[string]bool {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	return given
}

// fromEnv reports whether flag f of fs may come from the environment:
// every serve flag, and the connection flags (--tls-*, --auth-token-file,
// --peer-token-file)
// of the other commands, which a node's environment sets for them too. The
// rest of theirs may not: a node's KADOSESSION_DURATION=6h made bench's
// --duration, another flag of the same name, out of range.
func fromEnv(fs *flag.FlagSet, f *flag.Flag) bool {
	return fs.Name() == "serve" || strings.HasPrefix(f.Name, "tls-") || f.Name == "auth-token-file" || f.Name == "peer-token-file"
}

// usageWithEnv prints a flag set's usage noting the environment variables.
func usageWithEnv(fs *flag.FlagSet, synopsis, about string) func() {
	return func() {
		out := fs.Output()
		if fs.Name() == "serve" {
			fmt.Fprintf(out, "Usage: %s\n\n%s\n\nFlags (each also read from KADOSESSION_<FLAG>, e.g. %s):\n", synopsis, about, envName("listen"))
		} else {
			fmt.Fprintf(out, "Usage: %s\n\n%s\n\nFlags (--tls-*, --auth-token-file and --peer-token-file also read from KADOSESSION_<FLAG>, e.g. %s):\n", synopsis, about, envName("auth-token-file"))
		}
		fs.PrintDefaults()
	}
}

// explainFlagError rewrites the flag package's "invalid value "5x" for flag
// -duration: parse error" as "--duration "5x": want a duration such as …".
func explainFlagError(fs *flag.FlagSet, err error) error {
	m := flagErrorRE.FindStringSubmatch(err.Error())
	if m == nil {
		return errors.New(strings.Replace(err.Error(), " -", " --", 1))
	}
	f := fs.Lookup(m[2])
	if f == nil {
		return err
	}
	return fmt.Errorf("--%s %s: %v", f.Name, m[1], wants(f, errors.New(m[3])))
}

// flagErrorRE matches the flag package's errors for a value it could not
// parse: the value, the flag's name and the cause.
var flagErrorRE = regexp.MustCompile(`^invalid (?:boolean )?value (".*") for (?:flag )?-(\S+): (.*)$`)

// wants says what kind of value flag f takes, where the flag package's own
// error ("parse error") does not.
func wants(f *flag.Flag, err error) error {
	g, ok := f.Value.(flag.Getter)
	if !ok || strings.Contains(err.Error(), "out of range") {
		return err
	}
	switch g.Get().(type) {
	case time.Duration:
		return errors.New("want a duration such as 500ms, 10s, 5m or 24h")
	case int, int64, uint, uint64:
		return errors.New("want a whole number")
	case float64:
		return errors.New("want a number")
	case bool:
		return errors.New("want true or false")
	}
	return err
}

// envNote names the environment variables behind the values err quotes:
// a start refused over KADOSESSION_LISTEN=bogus said only `listen address
// "bogus"`, and the operator looked for a flag that was never given.
func envNote(fs *flag.FlagSet, err error) string {
	var from []string
	fs.VisitAll(func(f *flag.Flag) {
		v, ok := os.LookupEnv(envName(f.Name))
		if ok && v != "" && fromEnv(fs, f) && f.Value.String() == v && strings.Contains(err.Error(), v) {
			from = append(from, envName(f.Name)+"="+strconv.Quote(v))
		}
	})
	if len(from) == 0 {
		return ""
	}
	return " (from the environment: " + strings.Join(from, ", ") + ")"
}
