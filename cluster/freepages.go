package cluster

import (
	"errors"
	"maps"
	"os"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.etcd.io/bbolt"

	"github.com/kadosession/kadosession/internal/bytesize"
)

// freePageReturn gives the file system back the pages of the raft log's
// file (bolt) that hold nothing, while the disk is short of space. Bolt
// never shrinks its file: a follower whose log had filled a 64 MiB disk
// kept a 59 MB raft.db for good once its log was compacted to a few MB,
// so the disk stayed full, its save file was never written again and
// only one snapshot could be kept (a drill). Where the disk has less free
// than the reserve, a start and every log compaction punch holes in the
// file where its free pages are: the file keeps its size, and bolt
// writes those pages again when it reuses them. With room on the disk
// nothing is done, so that an ordinary log file does not fragment.
type freePageReturn struct {
	db   *bbolt.DB
	path string // the file's
	dir  string // the data directory, for its disk's free space
	log  hclog.Logger

	mu          sync.Mutex // one return at a time; what follows
	said        time.Time  // when a return was last logged at info
	since       int64      // bytes returned since then
	unsupported bool       // the file system cannot punch holes
}

// newFreePageReturn returns nil where the store's bolt database cannot be
// reached (mappedPages found none).
func newFreePageReturn(m *mappedPages, path, dir string, log hclog.Logger) *freePageReturn {
	if m == nil {
		return nil
	}
	return &freePageReturn{db: m.db, path: path, dir: dir, log: log}
}

// punchMin is the smallest run of free pages worth a hole; punchKeep is
// how many bytes of free pages are left unpunched, the first runs in the
// file: every bolt transaction, a deletion too, writes new pages before it
// frees old ones, and on a full disk the pages given back could not be
// written again. A node whose whole raft.db was log, restarted on a full
// disk, gave its last 64 KiB of free pages back at start, and could then
// delete nothing (a drill).
const (
	punchMin  = 64 << 10
	punchKeep = 1 << 20
)

// ifShort returns the file's free pages to the file system when its disk
// has less free than the reserve. Safe for concurrent use; does nothing
// on a nil *freePageReturn.
func (r *freePageReturn) ifShort() {
	if r == nil {
		return
	}
	d, err := freeSpace(r.dir)
	if err != nil || d.free >= d.reserve() {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.unsupported {
		return
	}
	n, err := r.punch()
	switch {
	case errors.Is(err, errNoPunch):
		r.unsupported = true
		r.log.Warn("the raft log's file cannot give its free pages back to the file system here; free space by hand", "file", r.path, "free", bytesize.Text(d.free), "error", err)
		return
	case err != nil:
		r.log.Warn("cannot give the raft log file's free pages back to the file system", "file", r.path, "error", err)
		return
	}
	r.since += n
	if n == 0 {
		return
	}
	level := hclog.Debug
	if time.Since(r.said) >= time.Minute {
		level = hclog.Info
	}
	r.log.Log(level, "the disk is nearly full: gave the raft log file's free pages back to the file system", "returned", bytesize.Text(uint64(n)),
		"returned_since_last_said", bytesize.Text(uint64(r.since)), "free_before", bytesize.Text(d.free))
	if level == hclog.Info {
		r.said, r.since = time.Now(), 0
	}
}

// punch punches a hole for every run of at least punchMin of free pages
// past the first punchKeep bytes of them, and returns how many bytes the
// holes cover. It holds bolt's one write
// transaction meanwhile: no other writer can take a free page, and a free
// page (unlike a pending one, freed by a transaction a reader may still
// see) is in no tree any reader can reach. The transaction is committed
// empty: a rolled back one makes bolt walk the whole file to rebuild its
// freelist (NoFreelistSync).
func (r *freePageReturn) punch() (int64, error) {
	f, err := os.OpenFile(r.path, os.O_WRONLY, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var n int64
	err = r.db.Update(func(tx *bbolt.Tx) error {
		spans, ok := freeSpans(r.db)
		if !ok {
			return errNoPunch
		}
		ps := int64(r.db.Info().PageSize)
		starts := slices.Sorted(maps.Keys(spans))
		kept := int64(0)
		for _, start := range starts {
			pages := spans[start]
			if kept < punchKeep || int64(pages)*ps < punchMin {
				kept += int64(pages) * ps
				continue
			}
			if err := punchHole(f, int64(start)*ps, int64(pages)*ps); err != nil {
				return err
			}
			n += int64(pages) * ps
		}
		return nil
	})
	return n, err
}

// freeSpans returns bolt's runs of free pages, first page and length,
// from its hashmap freelist (Options.FreelistType FreelistMapType, which
// the node sets), read through reflection: bolt does not export it, and
// its version is pinned. ok is false when the field is not what this
// expects. Call it inside a write transaction.
func freeSpans(db *bbolt.DB) (spans map[uint64]uint64, ok bool) {
	fl := reflect.ValueOf(db).Elem().FieldByName("freelist")
	if !fl.IsValid() || fl.Kind() != reflect.Pointer || fl.IsNil() {
		return nil, false
	}
	fm := fl.Elem().FieldByName("forwardMap")
	if !fm.IsValid() || fm.Kind() != reflect.Map || fm.Type().Key().Kind() != reflect.Uint64 || fm.Type().Elem().Kind() != reflect.Uint64 {
		return nil, false
	}
	spans = make(map[uint64]uint64, fm.Len())
	for it := fm.MapRange(); it.Next(); {
		spans[it.Key().Uint()] = it.Value().Uint()
	}
	return spans, true
}

// errNoPunch: the file system, or the platform, cannot punch holes.
var errNoPunch = errors.New("punching holes in a file is not supported here")
