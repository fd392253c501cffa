// Command kadosession runs and administers kadosession nodes: a Kado
// compatible session store replicated with raft.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

const usage = `kadosession — a replicated session store, compatible with Kado's SessionStorage.

Usage:
  kadosession serve [flags]     run a node (with no flags: a single node on 127.0.0.1:3001, data in ./kadosession-data)
  kadosession status [flags]    show every member of the cluster (--cluster HOST:PORT, --json)
  kadosession join [flags]      add a node: --cluster HOST:PORT --id ID --address HOST:PORT
  kadosession remove [flags]    remove a node: --cluster HOST:PORT --id ID
  kadosession backup [flags]    write a consistent backup of every session: --cluster HOST:PORT --out FILE
  kadosession restore [flags]   load a backup into a running cluster: --cluster HOST:PORT --in FILE
  kadosession health [flags]    exit 0 when a node serves and knows its leader (health checks)
  kadosession bench [flags]     measure saves or restores per second against a node
  kadosession help              this text

Run "kadosession <command> --help" for a command's flags.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "serve":
		err = serve(args[1:], stderr)
	case "status":
		err = status(args[1:], stdout, stderr)
	case "join":
		err = join(args[1:], stdout, stderr)
	case "remove":
		err = remove(args[1:], stdout, stderr)
	case "backup":
		err = backup(args[1:], stdout, stderr)
	case "restore":
		err = restore(args[1:], stdout, stderr)
	case "health":
		err = health(args[1:], stdout, stderr)
	case "bench":
		err = bench(args[1:], stdout, stderr)
	case "help", "-h", "--help", "-help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "kadosession: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "kadosession %s: %v\n", args[0], err)
		return 1
	}
	return 0
}
