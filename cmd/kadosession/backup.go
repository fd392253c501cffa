package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/kadosession/kadosession/cluster"
	"github.com/kadosession/kadosession/fsm"
	"github.com/kadosession/kadosession/internal/bytesize"
)

// progressLine draws a one-line progress indication on stderr when it is a
// terminal, and nothing otherwise (logs and pipes stay clean).
type progressLine struct {
	w      io.Writer
	on     bool
	what   string
	last   time.Time
	drawn  bool
	isSize bool
}

func newProgress(stderr io.Writer, what string, isSize bool) *progressLine {
	p := &progressLine{w: stderr, what: what, isSize: isSize}
	if f, ok := stderr.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			p.on = true
		}
	}
	return p
}

func (p *progressLine) update(done, total int64) {
	if !p.on || (done < total && time.Since(p.last) < 100*time.Millisecond) {
		return
	}
	p.last, p.drawn = time.Now(), true
	pct := 100.0
	if total > 0 {
		pct = 100 * float64(done) / float64(total)
	}
	if p.isSize {
		fmt.Fprintf(p.w, "\r%s: %s of %s (%.0f%%)   ", p.what, bytesize.Text(uint64(done)), bytesize.Text(uint64(total)), pct)
	} else {
		fmt.Fprintf(p.w, "\r%s: %d of %d sessions (%.0f%%)   ", p.what, done, total, pct)
	}
}

func (p *progressLine) finish() {
	if p.drawn {
		fmt.Fprintln(p.w)
	}
}

func backup(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("backup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf connFlags
	cf.register(fs)
	addr := fs.String("cluster", "127.0.0.1:3001", "`HOST:PORT` of any node (a follower forwards to the leader)")
	out := fs.String("out", "", "`FILE` to write the backup to (a save-file document; written atomically)")
	chunk := fs.Int64("chunk-size", cluster.DefaultBackupChunk, "bytes fetched per request (at most 16 MiB)")
	fs.Usage = usageWithEnv(fs, "kadosession backup --cluster HOST:PORT --out FILE",
		"Takes a consistent backup of every session: the leader captures its state at a linearizable point and\n"+
			"streams it in chunks as a save-file document (the Kado save-file format, the raft snapshot format).\n"+
			"The file is checked (SHA-256, decoded) before it replaces FILE. Restore it with kadosession restore,\n"+
			"or seed a new node with a copy: cp FILE NEWDIR/sessions.json, then serve --data NEWDIR (a node rewrites\n"+
			"its save file, so do not give the backup itself as --save-file).")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *out == "" {
		return fmt.Errorf("--out FILE is required")
	}
	if *chunk <= 0 || *chunk > cluster.MaxBackupChunk {
		return fmt.Errorf("--chunk-size %d: want 1 to %d", *chunk, cluster.MaxBackupChunk)
	}
	// Checked before the leader captures anything.
	if st, err := os.Stat(*out); err == nil && st.IsDir() {
		return fmt.Errorf("--out %s is a directory: name the backup file, e.g. %s", *out, filepath.Join(*out, "sessions-backup.json"))
	}
	if dir := filepath.Dir(*out); dir != "" {
		st, err := os.Stat(dir)
		switch {
		case errors.Is(err, os.ErrNotExist):
			return fmt.Errorf("--out %s: the directory %s does not exist (create it first, or write the backup elsewhere)", *out, dir)
		case err != nil:
			return fmt.Errorf("--out %s: %v", *out, err)
		case !st.IsDir():
			return fmt.Errorf("--out %s: %s is not a directory", *out, dir)
		}
	}
	call, closeConn, err := adminSession(*addr, &cf, 2*time.Minute)
	if err != nil {
		return err
	}
	defer closeConn()

	var info cluster.BackupInfo
	start := time.Now()
	err = cluster.WriteFileAtomic(*out, func(tmp *os.File) error {
		bw := bufio.NewWriterSize(tmp, 1<<20)
		prog := newProgress(stderr, "backup", true)
		var err error
		info, err = cluster.FetchBackup(context.Background(), call, bw, cluster.BackupOptions{Chunk: *chunk, Progress: prog.update})
		prog.finish()
		if err != nil {
			return err
		}
		if err := bw.Flush(); err != nil {
			return fmt.Errorf("write %s: %w", tmp.Name(), err)
		}
		// Verify what is in the file, not what was sent: hash it, then
		// decode it; only then may it replace --out.
		h := sha256.New()
		if _, err := tmp.Seek(0, io.SeekStart); err != nil {
			return err
		}
		if _, err := io.Copy(h, tmp); err != nil {
			return fmt.Errorf("read back %s: %w", tmp.Name(), err)
		}
		if _, err := tmp.Seek(0, io.SeekStart); err != nil {
			return err
		}
		records, err := fsm.ReadDocument(bufio.NewReaderSize(tmp, 1<<20), 0)
		if err != nil {
			return fmt.Errorf("the backup written to %s does not decode: %w", tmp.Name(), err)
		}
		if sum := hex.EncodeToString(h.Sum(nil)); sum != info.SHA256 || len(records) != info.Sessions {
			return fmt.Errorf("the backup on disk does not match the leader's: %d sessions, sha256 %s; want %d, %s", len(records), sum, info.Sessions, info.SHA256)
		}
		return nil
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "backup written to %s: %d sessions, %s, sha256 %s (leader %s, raft index %d, %s)\n",
		*out, info.Sessions, bytesize.Text(uint64(info.Size)), info.SHA256, info.Leader, info.Index, time.Since(start).Round(time.Millisecond))
	return nil
}

func restore(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("restore", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf connFlags
	cf.register(fs)
	addr := fs.String("cluster", "127.0.0.1:3001", "`HOST:PORT` of any node (a follower forwards to the leader)")
	in := fs.String("in", "", "backup `FILE` (a save-file document: from kadosession backup, a node's save file, or Kado's)")
	batch := fs.Int("batch-size", cluster.DefaultRestoreBatch, "bytes of sessions sent per request (keep below the nodes' --max-frame)")
	replace := fs.Bool("replace", false, "restore into a cluster that already holds sessions: those with the file's ids are replaced by the file's copies, even if newer")
	fs.Usage = usageWithEnv(fs, "kadosession restore --cluster HOST:PORT --in FILE",
		"Loads every session of a backup into a running cluster through raft (replicated like any write),\n"+
			"each keeping its save time (_written). Into a cluster that holds sessions it needs --replace:\n"+
			"sessions with the file's ids are then replaced by the file's copies; others are kept.\n"+
			"When the cluster held nothing else, the result is checked to be identical to the file (SHA-256).")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *in == "" {
		return fmt.Errorf("--in FILE is required")
	}
	if *batch <= 0 {
		return fmt.Errorf("--batch-size %d: give a number of bytes above 0 (default %d)", *batch, cluster.DefaultRestoreBatch)
	}
	f, err := os.Open(*in)
	if err != nil {
		return err
	}
	records, badIDs, err := fsm.ReadSaveFile(bufio.NewReaderSize(f, 1<<20), time.Now().UnixMilli())
	f.Close()
	if err != nil {
		return fmt.Errorf("%s cannot be restored: %w", *in, err)
	}
	if badIDs > 0 {
		fmt.Fprintf(stderr, "note: %d sessions of %s have ids this store cannot hold (empty, or over %d bytes: Kado took any cookie's value); they are left out\n", badIDs, *in, fsm.MaxSIDLen)
	}
	want := cluster.DocumentDigest(records)
	call, closeConn, err := adminSession(*addr, &cf, time.Minute)
	if err != nil {
		return err
	}
	defer closeConn()
	ctx := context.Background()
	before, err := cluster.FetchDigest(ctx, call)
	if err != nil {
		return fmt.Errorf("read the cluster's state before restoring: %w", err)
	}
	if before.Sessions > 0 {
		if !*replace {
			return fmt.Errorf("the cluster already holds %d sessions: restoring replaces those with the file's ids by the file's copies, "+
				"even where the cluster's are newer (a change since the backup is undone, a logout since it is undone too); "+
				"to go on, run restore again with --replace", before.Sessions)
		}
		fmt.Fprintf(stderr, "note: the cluster already holds %d sessions; the file's %d are added (same ids replaced: --replace)\n", before.Sessions, len(records))
	}
	prog := newProgress(stderr, "restore", false)
	start := time.Now()
	moved := 0
	loaded, err := cluster.RestoreRecords(ctx, call, records, cluster.RestoreOptions{BatchBytes: *batch,
		Progress: func(done, total int) { prog.update(int64(done), int64(total)) },
		Moved:    func(n int) { moved += n }})
	prog.finish()
	if err != nil {
		return fmt.Errorf("%w (%d of %d sessions were loaded; running restore again with --replace is safe)", err, loaded, len(records))
	}
	if moved > 0 {
		fmt.Fprintf(stderr, "note: %d sessions were saved more than a minute in the future by the leader's clock (the clock of the machine that wrote the file?); "+
			"they were restored as saved now, so they would expire, and the cluster's state differs from the file there\n", moved)
	}
	after, err := cluster.FetchDigest(ctx, call)
	if err != nil {
		return fmt.Errorf("loaded %d sessions, but could not read the result back: %w", loaded, err)
	}
	took := time.Since(start).Round(time.Millisecond)
	if after.Expired > 0 {
		fmt.Fprintf(stderr, "warning: %d of the cluster's sessions were saved longer ago than its session duration (--duration): "+
			"they read as absent, and the next prune removes them (restored sessions keep their _written time)\n", after.Expired)
	}
	switch {
	case after.SHA256 == want.SHA256:
		fmt.Fprintf(stdout, "restored %d sessions from %s in %s; the cluster's state is identical to the file (sha256 %s)\n", loaded, *in, took, after.SHA256)
	case before.Sessions == 0 && moved == 0:
		return fmt.Errorf("restored %d sessions, but the cluster now holds %d with sha256 %s, not the file's %s (did something write or prune meanwhile?)",
			loaded, after.Sessions, after.SHA256, want.SHA256)
	case moved > 0:
		fmt.Fprintf(stdout, "restored %d sessions from %s in %s; the cluster now holds %d sessions (not compared: save times were moved)\n",
			loaded, *in, took, after.Sessions)
	default:
		fmt.Fprintf(stdout, "restored %d sessions from %s in %s; the cluster now holds %d sessions (not compared: it held others before)\n",
			loaded, *in, took, after.Sessions)
	}
	return nil
}
