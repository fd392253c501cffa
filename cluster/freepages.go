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

	kick chan struct{} // a compaction happened (capacity 1; run)

	mu          sync.Mutex // one return at a time; unsupported
	unsupported bool       // holes cannot be punched here
	said        sayEvery   // bytes returned, said once a minute
}

// newFreePageReturn returns nil where the store's bolt database cannot be
// reached (mappedPages found none), or holes cannot be punched.
func newFreePageReturn(m *mappedPages, path, dir string, log hclog.Logger) *freePageReturn {
	if m == nil || !canPunch {
		return nil
	}
	return &freePageReturn{db: m.db, path: path, dir: dir, log: log, kick: make(chan struct{}, 1)}
}

// compacted tells run that the log lost entries. Does nothing on a nil
// *freePageReturn.
func (r *freePageReturn) compacted() {
	if r == nil {
		return
	}
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// run gives free pages back after compactions (ifShort) until stop is
// closed, at most once a second: off raft's goroutines (a follower's
// install deletes its whole log on raft's main one), and not once per
// compaction (each return commits a transaction: two fsyncs).
func (r *freePageReturn) run(stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case <-r.kick:
		}
		r.ifShort()
		select {
		case <-stop:
			return
		case <-time.After(time.Second):
		}
	}
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
	case errors.Is(err, errNoPunch), errors.Is(err, errNoFreelist):
		r.unsupported = true
		r.log.Warn("the raft log's file cannot give its free pages back to the file system; free space by hand", "file", r.path, "free", bytesize.Text(d.free), "error", err)
		return
	case err != nil:
		r.log.Warn("cannot give the raft log file's free pages back to the file system", "file", r.path, "error", err)
		return
	}
	if n == 0 {
		return
	}
	level, since := r.said.next(hclog.Info, n)
	r.log.Log(level, "the disk is nearly full: gave the raft log file's free pages back to the file system", "returned", bytesize.Text(uint64(n)),
		"returned_since_last_said", bytesize.Text(uint64(since)), "free_before", bytesize.Text(d.free))
}

// punch punches a hole for every run of at least punchMin of free pages
// past the first punchKeep bytes of them, and returns how many bytes of
// disk the file takes less (runs punched before count nothing). It holds
// bolt's one write transaction meanwhile: no other writer can take a free
// page, and a free page (unlike a pending one, freed by a transaction a
// reader may still see) is in no tree any reader can reach. The
// transaction is committed, empty: both meta pages then name the same
// tree, so even a fall back to the older meta (when the newer is found
// damaged) reaches no page punched.
func (r *freePageReturn) punch() (int64, error) {
	if r.db.FreelistType != bbolt.FreelistMapType {
		return 0, errNoFreelist
	}
	f, err := os.OpenFile(r.path, os.O_WRONLY, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	before := allocatedBytes(f)
	err = r.db.Update(func(tx *bbolt.Tx) error {
		spans, ok := freeSpans(r.db)
		if !ok {
			return errNoFreelist
		}
		ps := int64(r.db.Info().PageSize)
		kept := int64(0)
		for _, start := range slices.Sorted(maps.Keys(spans)) {
			off, end := int64(start)*ps, int64(start+spans[start])*ps
			if kept < punchKeep {
				keep := min(end-off, (punchKeep-kept+ps-1)/ps*ps)
				off, kept = off+keep, kept+keep
			}
			if end-off < punchMin {
				continue
			}
			if err := punchHole(f, off, end-off); err != nil {
				return err
			}
		}
		return nil
	})
	return max(0, before-allocatedBytes(f)), err
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

var (
	// errNoPunch: the file system cannot punch holes.
	errNoPunch = errors.New("the file system cannot punch holes in a file")
	// errNoFreelist: bolt's freelist is not the hashmap this reads.
	errNoFreelist = errors.New("bolt's freelist cannot be read (is bbolt a version other than the one pinned?)")
)
