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
// id is refused: the data belongs to another node.
func loadNodeID(dir, want string) (string, error) {
	path := filepath.Join(dir, idFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		kept := strings.TrimSpace(string(b))
		if err := validateID(kept); err != nil {
			return "", fmt.Errorf("%s is damaged: %v", path, err)
		}
		if want != "" && want != kept {
			return "", fmt.Errorf("data directory %s belongs to node %q, not %q: start with --id %s, or use a new --data directory for node %s",
				dir, kept, want, kept, want)
		}
		return kept, nil
	case errors.Is(err, os.ErrNotExist):
		id := want
		if id == "" {
			var r [6]byte
			if _, err := rand.Read(r[:]); err != nil {
				return "", err
			}
			id = "node-" + hex.EncodeToString(r[:])
		}
		if err := writeFileAtomic(path, []byte(id+"\n")); err != nil {
			return "", fmt.Errorf("keep node id: %w", err)
		}
		return id, nil
	default:
		return "", fmt.Errorf("read node id: %w", err)
	}
}
