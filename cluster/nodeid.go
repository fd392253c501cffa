package cluster

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

const idFile = "node-id"

// validateID accepts ids of 1–64 letters, digits, '-', '_' and '.'.
func validateID(id string) error {
	if id == "" || len(id) > 64 {
		return fmt.Errorf("node id %q must be 1 to 64 characters", id)
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("node id %q may hold only letters, digits, '-', '_' and '.'", id)
		}
	}
	return nil
}

// loadNodeID returns the id kept in dir, creating it from want (or a fresh
// random id) when the directory has none. A want that differs from the kept
// id is refused, the data belonging to another node, unless replaceable
// (the directory never became part of a cluster): want is then kept, and
// replaced names the id it replaced.
func loadNodeID(dir, want string, replaceable bool) (id, replaced string, err error) {
	path := filepath.Join(dir, idFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		kept := strings.TrimSpace(string(b))
		if err := validateID(kept); err != nil {
			return "", "", fmt.Errorf("%s is damaged: %v", path, err)
		}
		if want == "" || want == kept {
			return kept, "", nil
		}
		if !replaceable {
			return "", "", fmt.Errorf("data directory %s belongs to node %q, not %q: start with --id %s, or use a new --data directory for node %s",
				dir, kept, want, kept, want)
		}
		if err := writeFileAtomic(path, []byte(want+"\n")); err != nil {
			return "", "", fmt.Errorf("keep node id: %w", err)
		}
		return want, kept, nil
	case errors.Is(err, os.ErrNotExist):
		id := want
		if id == "" {
			var r [6]byte
			if _, err := rand.Read(r[:]); err != nil {
				return "", "", err
			}
			id = "node-" + hex.EncodeToString(r[:])
		}
		if err := writeFileAtomic(path, []byte(id+"\n")); err != nil {
			return "", "", fmt.Errorf("keep node id: %w", err)
		}
		return id, "", nil
	default:
		return "", "", fmt.Errorf("read node id: %w", err)
	}
}
