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
	"time"

	"github.com/kadosession/kadosession/client"
)

// Workload is the clients of one schedule: Go clients doing save, patch,
// delete and restore on a few shared sessions (plus each its own
// grow-only "ledger" session, where no acknowledged key may ever go
// missing), and Kado JSON clients doing save and restore on the shared
// sessions. Every call is recorded in Rec.
type Workload struct {
	Stores    []*client.Store // one per Go client
	KadoDials []func(ctx context.Context, addr string) (net.Conn, error)
	KadoAddrs []string // nodes a Kado JSON client picks from, per request
	SIDs      []string // the shared sessions
	Seed      int64
	OpTimeout time.Duration // bounds one call (4 s)
	Think     time.Duration // most pause between a client's calls (5 ms)
	Rec       *Recorder

	mu      sync.Mutex
	ledgers map[string]bool
	Failed  int // reads that failed (not recorded: a failed read has no effect)
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
	var wg sync.WaitGroup
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
