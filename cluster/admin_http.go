package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// adminHTTP is the node's operator endpoint on Config.HTTP:
//
//	/metrics  Prometheus text format (see metrics)
//	/healthz  200 while the process serves HTTP at all
//	/readyz   200 when the node is ready, a member with a known leader and,
//	          as a follower, heard from it recently; 503 with the reason
//	/status   the cluster as this node sees it: the JSON of
//	          `kadosession status --json` (admin op "cluster")
//
// It has no authentication: bind it to loopback or a private network.
type adminHTTP struct {
	srv     *http.Server
	ln      net.Listener
	handler atomic.Pointer[http.Handler] // the endpoints; while starting, startingHTTP
}

// listenHTTP binds the admin endpoint's address when Config.HTTP is set,
// and serves it at once: while the node starts (a large snapshot can take
// seconds to restore) /healthz answers 200 and the rest 503 "starting",
// where a probe used to wait for an answer that did not come. Open calls
// it before it touches the data directory, so that a busy address stops
// start-up with nothing written.
func listenHTTP(addr string, log hclog.Logger) (*adminHTTP, error) {
	if addr == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin HTTP: listen on %s: %w (check --http)", addr, err)
	}
	h := &adminHTTP{ln: ln}
	var starting http.Handler = http.HandlerFunc(startingHTTP)
	h.handler.Store(&starting)
	h.srv = &http.Server{ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { (*h.handler.Load()).ServeHTTP(w, r) })}
	go func() {
		if err := h.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("admin HTTP stopped", "error", err)
		}
	}()
	return h, nil
}

// startingHTTP answers the admin endpoints while the node starts.
func startingHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/healthz" {
		writeJSON(w, http.StatusOK, map[string]any{"ok": true, "starting": true})
		return
	}
	writeJSON(w, http.StatusServiceUnavailable, map[string]any{"ready": false, "reason": "starting: opening the data directory and replaying the raft log"})
}

// startHTTP switches the admin endpoint from startingHTTP to the node's
// endpoints.
func (n *Node) startHTTP() {
	h := n.httpSrv
	if h == nil {
		return
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(n.obs.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"ok": true, "id": n.id})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		rd := n.Readiness()
		code := http.StatusOK
		if !rd.Ready {
			code = http.StatusServiceUnavailable
		}
		writeJSON(w, code, rd)
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		writeJSON(w, http.StatusOK, n.ClusterStatus(ctx))
	})
	var handler http.Handler = mux
	h.handler.Store(&handler)
	n.log.Info("serving admin HTTP (/metrics, /healthz, /readyz, /status)", "address", h.ln.Addr().String())
}

// stopHTTP closes the admin endpoint, if any.
func (n *Node) stopHTTP() {
	if n.httpSrv != nil {
		_ = n.httpSrv.srv.Close()
	}
}

// HTTPAddr returns the address the admin HTTP endpoint is bound to, or ""
// when Config.HTTP is empty.
func (n *Node) HTTPAddr() string {
	if n.httpSrv == nil {
		return ""
	}
	return n.httpSrv.ln.Addr().String()
}

// Readiness is the answer of /readyz.
type Readiness struct {
	Ready  bool   `json:"ready"`
	Reason string `json:"reason,omitempty"` // why not ready
	ID     string `json:"id"`
	State  string `json:"state"`
	Leader string `json:"leader_id,omitempty"`
	// LastContact is how long ago a follower last heard from its leader.
	LastContact string `json:"last_contact,omitempty"`
	CommitIndex uint64 `json:"commit_index"`
	Applied     uint64 `json:"applied_index"`
}

// readyContactBound is how long a follower may go without hearing from its
// leader and still call itself ready: a few heartbeat timeouts (a follower
// starts an election after one).
func (n *Node) readyContactBound() time.Duration {
	return max(3*n.cfg.HeartbeatTimeout, 500*time.Millisecond)
}

// Readiness reports whether the node should receive traffic: it serves
// client requests (start-up done, not shutting down), it is a member of
// the raft configuration, it knows a leader, and, as a follower, it heard
// from the leader within a few heartbeat timeouts and has caught up since
// its start (applied what the leader had committed when it first asked).
// Safe for concurrent use.
func (n *Node) Readiness() Readiness {
	st := n.raft.State()
	_, leaderID := n.raft.LeaderWithID()
	rd := Readiness{ID: n.id, State: stateName(st), Leader: string(leaderID),
		CommitIndex: n.raft.CommitIndex(), Applied: n.appliedIndex()}
	var since time.Duration
	if st != raft.Leader {
		if t := n.raft.LastContact(); !t.IsZero() {
			since = time.Since(t)
			rd.LastContact = since.Round(time.Millisecond).String()
		} else {
			rd.LastContact = "never"
		}
	}
	rd.Reason = n.notReadyReason(st, leaderID, since, rd.LastContact == "never")
	rd.Ready = rd.Reason == ""
	return rd
}

const removedReason = "not a member of the cluster's configuration (removed, or not joined yet)"

func (n *Node) notReadyReason(st raft.RaftState, leader raft.ServerID, since time.Duration, never bool) string {
	select {
	case <-n.stop:
		return "shutting down"
	default:
	}
	if !n.ready.Load() {
		if n.notMember() {
			// Added and removed at once: the configuration naming it never
			// reached it, and it would say "starting" for good.
			return removedReason
		}
		return "starting: waiting for a leader, to join, or to import the save file"
	}
	if f := n.logHealth.failing.Load(); f != nil {
		return f.String()
	}
	switch {
	case n.removed():
		return removedReason
	case st == raft.Candidate:
		return "candidate: an election is under way"
	case leader == "":
		return "no leader known"
	case st == raft.Follower && never:
		return "never heard from the leader"
	case st == raft.Follower && since > n.readyContactBound():
		return fmt.Sprintf("last heard from the leader %s ago (more than %s)", since.Round(time.Millisecond), n.readyContactBound())
	case !n.isCaughtUp(false): // a leader too, until a barrier of its commits
		return n.catchingUp()
	}
	return ""
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	b, _ := json.MarshalIndent(v, "", "  ")
	_, _ = w.Write(append(b, '\n'))
}
