package faultkit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kadosession/kadosession/client"
)

// Workload is the clients of one schedule: Go clients doing save, patch,
// delete and restore on a few shared sessions (plus each its own
// grow-only "ledger" session, where no acknowledged key may ever go
// missing), and Kado JSON clients doing save and restore on the shared
// sessions. Every call is recorded in Rec.
//
// The first Mono Go clients also each run a "mono" writer: patches adding
// key n<k> to its grow-only mono session, k counting up (a new session every
// monoKeys keys). MonoReaders (Leader or Stale consistency) read only the
// mono sessions; their reads are kept apart (MonoReads) for
// CheckMonotonic, not in Rec: they are allowed to be stale, so porcupine
// would reject them.
type Workload struct {
	Stores    []*client.Store // one per Go client
	KadoDials []func(ctx context.Context, addr string) (net.Conn, error)
	KadoAddrs []string // nodes a Kado JSON client picks from, per request
	SIDs      []string // the shared sessions
	Seed      int64
	OpTimeout time.Duration // bounds one call (4 s)
	Think     time.Duration // most pause between a client's calls (5 ms)
	Rec       *Recorder

	Mono        int          // Go clients (Stores[:Mono]) that also write a mono session
	MonoReaders []MonoReader // clients reading the mono sessions

	mu         sync.Mutex
	ledgers    map[string]bool
	monos      map[string]bool
	monoGen    []atomic.Int64 // per mono writer: the session it writes now
	monoReads  []MonoRead
	restarts   map[string][]int64
	Failed     int // reads that failed (not recorded: a failed read has no effect)
	MonoFailed int // mono reads that failed
}

// MonoReader is a client reading the mono sessions, usually with
// client.Leader or client.Stale consistency.
type MonoReader struct {
	Name  string // shown in the check's output, e.g. "leader" or "stale@addr"
	Store *client.Store
	Node  string // the one node Store reads from (Addrs has just it), or "" for any
}

// MonoRead is one successful read by a MonoReader.
type MonoRead struct {
	Reader       string
	Node         string // MonoReader.Node
	SID          string
	Call, Return int64 // Recorder clock
	Found        bool
	Data         map[string]string
}

// monoKeys is the keys per mono session before its writer moves on to a
// new one (well under the key limit).
const monoKeys = 250

func monoSID(writer int, gen int64) string { return fmt.Sprintf("mono-c%d-%d", writer, gen) }

// Restarting records that the node at addr (as the clients know it) is
// about to be started again after a crash: a pinned Stale reader of that
// node may see its state go back (see CheckMonotonic). Safe for concurrent
// use, and before Run.
func (w *Workload) Restarting(addr string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.restarts == nil {
		w.restarts = map[string][]int64{}
	}
	w.restarts[addr] = append(w.restarts[addr], w.Rec.Now())
}

// Restarts returns the times (Recorder clock) Restarting was called, by
// node address.
func (w *Workload) Restarts() map[string][]int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string][]int64, len(w.restarts))
	for a, ts := range w.restarts {
		out[a] = append([]int64(nil), ts...)
	}
	return out
}

// MonoReads returns the mono readers' successful reads.
func (w *Workload) MonoReads() []MonoRead {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]MonoRead(nil), w.monoReads...)
}

const ledgerKeys = 300 // keys per ledger session, well under the key limit

// Run runs every client until ctx ends, then waits for the calls in flight
// (each bounded by OpTimeout).
func (w *Workload) Run(ctx context.Context) {
	if w.OpTimeout == 0 {
		w.OpTimeout = 4 * time.Second
	}
	if w.Think == 0 {
		w.Think = 5 * time.Millisecond
	}
	w.ledgers = map[string]bool{}
	w.monos = map[string]bool{}
	w.Mono = min(w.Mono, len(w.Stores))
	w.monoGen = make([]atomic.Int64, w.Mono)
	var wg sync.WaitGroup
	for i := range w.Mono {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.monoWriter(ctx, i, w.Stores[i], rand.New(rand.NewSource(w.Seed*131+1000+int64(i))))
		}()
	}
	for j, r := range w.MonoReaders {
		if w.Mono == 0 {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.monoReader(ctx, r, rand.New(rand.NewSource(w.Seed*131+2000+int64(j))))
		}()
	}
	for i, s := range w.Stores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.goClient(ctx, i, s, rand.New(rand.NewSource(w.Seed*131+int64(i))))
		}()
	}
	for j, dial := range w.KadoDials {
		i := len(w.Stores) + j
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.kadoClient(ctx, i, dial, rand.New(rand.NewSource(w.Seed*131+int64(i))))
		}()
	}
	wg.Wait()
}

// AllSIDs is every session the workload wrote: the shared ones and the
// ledgers.
func (w *Workload) AllSIDs() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := append([]string(nil), w.SIDs...)
	for sid := range w.ledgers {
		out = append(out, sid)
	}
	for sid := range w.monos {
		out = append(out, sid)
	}
	sort.Strings(out)
	return out
}

func (w *Workload) pause(ctx context.Context, rng *rand.Rand) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(time.Duration(rng.Int63n(int64(w.Think)) + 1)):
		return true
	}
}

func (w *Workload) goClient(ctx context.Context, id int, s *client.Store, rng *rand.Rand) {
	keys := []string{"a", "b", "c"}
	for seq := 0; w.pause(ctx, rng); seq++ {
		v := fmt.Sprintf(`"c%d-%d"`, id, seq)
		op := Op{Client: id, Via: "go", SID: w.SIDs[rng.Intn(len(w.SIDs))]}
		p := rng.Float64()
		switch {
		case p < 0.15:
			op.Kind, op.SID = Patch, fmt.Sprintf("ledger-c%d-%d", id, seq/ledgerKeys)
			op.Data = map[string]string{fmt.Sprintf("k%d", seq): v}
			w.mu.Lock()
			w.ledgers[op.SID] = true
			w.mu.Unlock()
		case p < 0.35:
			op.Kind, op.Data = Save, map[string]string{}
			for _, k := range keys {
				if len(op.Data) == 0 || rng.Intn(2) == 0 {
					op.Data[k] = v
				}
			}
		case p < 0.60:
			op.Kind, op.Data = Patch, map[string]string{keys[rng.Intn(len(keys))]: v}
			if rng.Intn(5) == 0 {
				if k := keys[rng.Intn(len(keys))]; op.Data[k] == "" {
					op.Del = []string{k}
				}
			}
		case p < 0.65:
			op.Kind = Delete
		default:
			op.Kind = Read
		}
		w.goCall(s, &op)
	}
}

// monoWriter patches key n<k> = k into mono session monoSID(id, k/monoKeys)
// for k = 0, 1, 2...: a mono session only grows, whatever order pending
// writes take effect in, so a read that misses a key an earlier read saw
// went back in time. The writes are recorded (lost-write and porcupine
// checks) under client id 100+id.
func (w *Workload) monoWriter(ctx context.Context, id int, s *client.Store, rng *rand.Rand) {
	for k := int64(0); w.pause(ctx, rng); k++ {
		gen := k / monoKeys
		sid := monoSID(id, gen)
		w.mu.Lock()
		w.monos[sid] = true
		w.mu.Unlock()
		w.monoGen[id].Store(gen)
		op := Op{Client: 100 + id, Via: "go", Kind: Patch, SID: sid, Data: map[string]string{fmt.Sprintf("n%d", k): fmt.Sprint(k)}}
		w.goCall(s, &op)
	}
}

// monoReader reads, one call at a time, the mono session a random writer
// is writing now.
func (w *Workload) monoReader(ctx context.Context, r MonoReader, rng *rand.Rand) {
	for w.pause(ctx, rng) {
		i := rng.Intn(w.Mono)
		sid := monoSID(i, w.monoGen[i].Load())
		rd := MonoRead{Reader: r.Name, Node: r.Node, SID: sid}
		cctx, cancel := context.WithTimeout(context.Background(), w.OpTimeout)
		rd.Call = w.Rec.Now()
		data, found, err := r.Store.RestoreRaw(cctx, sid)
		rd.Return = w.Rec.Now()
		cancel()
		if err == nil && found {
			rd.Found = true
			rd.Data, err = DecodeData(data)
		}
		w.mu.Lock()
		if err != nil {
			w.MonoFailed++
		} else {
			w.monoReads = append(w.monoReads, rd)
		}
		w.mu.Unlock()
	}
}

func (w *Workload) goCall(s *client.Store, op *Op) {
	ctx, cancel := context.WithTimeout(context.Background(), w.OpTimeout)
	defer cancel()
	raw := func(m map[string]string) map[string]json.RawMessage {
		out := make(map[string]json.RawMessage, len(m))
		for k, v := range m {
			out[k] = json.RawMessage(v)
		}
		return out
	}
	op.Call = w.Rec.Now()
	var err error
	switch op.Kind {
	case Save:
		err = s.Save(ctx, op.SID, raw(op.Data))
	case Patch:
		err = s.Patch(ctx, op.SID, raw(op.Data), op.Del)
	case Delete:
		err = s.Delete(ctx, op.SID)
	case Read:
		var data []byte
		var found bool
		data, found, err = s.RestoreRaw(ctx, op.SID)
		if err == nil {
			op.Found = FoundNo
			if found {
				op.Found = FoundYes
				op.Data, err = DecodeData(data)
			}
		}
	}
	w.finish(op, err)
}

// finish records op: a failed write is pending (it may still take effect:
// retries and forwarding are idempotent resends), a failed read is dropped.
func (w *Workload) finish(op *Op, err error) {
	op.Return = w.Rec.Now()
	if err != nil {
		if op.Kind == Read {
			w.mu.Lock()
			w.Failed++
			w.mu.Unlock()
			return
		}
		op.Return, op.Err = Pending, err.Error()
	}
	w.Rec.Add(*op)
}

func (w *Workload) kadoClient(ctx context.Context, id int, dial func(context.Context, string) (net.Conn, error), rng *rand.Rand) {
	for seq := 0; w.pause(ctx, rng); seq++ {
		op := Op{Client: id, Via: "kado", SID: w.SIDs[rng.Intn(len(w.SIDs))], Node: w.KadoAddrs[rng.Intn(len(w.KadoAddrs))]}
		var req []byte
		if rng.Intn(5) < 2 {
			v := fmt.Sprintf(`"k%d-%d"`, id, seq)
			op.Kind, op.Data = Save, map[string]string{"a": v, "kado": v}
			req = fmt.Appendf(nil, `{"save":{"sid":%q,"data":{"a":%s,"kado":%s},"_written":%d}}`, op.SID, v, v, time.Now().UnixMilli())
		} else {
			op.Kind = Read
			req = fmt.Appendf(nil, `{"restore":{"sid":%q,"_written":%d}}`, op.SID, time.Now().UnixMilli())
		}
		op.Call = w.Rec.Now()
		result, err := w.kadoCall(dial, op.Node, req)
		if err == nil && op.Kind == Read {
			op.Found = FoundUnknown
			op.Data, err = DecodeData(result)
		}
		w.finish(&op, err)
	}
}

// kadoCall makes one Kado JSON request the way Kado's SessionStoreLocal
// does: write, half-close, read to EOF; it returns the "result" member.
func (w *Workload) kadoCall(dial func(context.Context, string) (net.Conn, error), addr string, req []byte) (json.RawMessage, error) {
	ctx, cancel := context.WithTimeout(context.Background(), w.OpTimeout)
	defer cancel()
	c, err := dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	dl, _ := ctx.Deadline()
	_ = c.SetDeadline(dl)
	if _, err := c.Write(req); err != nil {
		return nil, err
	}
	if hc, ok := c.(interface{ CloseWrite() error }); ok {
		if err := hc.CloseWrite(); err != nil {
			return nil, err
		}
	}
	out, err := io.ReadAll(c)
	if err != nil {
		return nil, err
	}
	var reply struct {
		Status  string          `json:"status"`
		Message string          `json:"message"`
		Result  json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal(bytes.TrimSpace(out), &reply); err != nil {
		return nil, fmt.Errorf("reply %q: %v", out, err)
	}
	if reply.Status != "ok" {
		return nil, errors.New("kado error: " + reply.Message)
	}
	return reply.Result, nil
}

// FinalReads reads every session once the cluster is healed and records
// the reads (Via "final") for Check; each read is retried until it
// succeeds or ctx ends.
func FinalReads(ctx context.Context, s *client.Store, sids []string, rec *Recorder, clientID int) error {
	for _, sid := range sids {
		for {
			op := Op{Client: clientID, Via: "final", Kind: Read, SID: sid, Call: rec.Now()}
			cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			data, found, err := s.RestoreRaw(cctx, sid)
			cancel()
			if err == nil {
				op.Return, op.Found = rec.Now(), FoundNo
				if found {
					op.Found = FoundYes
					if op.Data, err = DecodeData(data); err != nil {
						return err
					}
				}
				rec.Add(op)
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("final read of %s: %w (last error: %v)", sid, ctx.Err(), err)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return nil
}
