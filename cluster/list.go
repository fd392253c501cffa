package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kadosession/kadosession/fsm"
	"github.com/kadosession/kadosession/transport"
)

// Listing sessions travels as one admin op, answered by the leader (a
// follower forwards it), one page per request:
//
//	{"op":"list","prefix":P,"after":SID,"limit":N}
//
// prefix and after are optional (""), limit defaults to DefaultListLimit
// and must be 1…MaxListLimit; any other member is refused. The answer is
//
//	{"sessions":[{"sid":S,"data":{…}},…],"next":SID,"done":BOOL}
//
// sessions holds, in byte order of id, the first sessions whose id starts
// with P, sorts strictly after the cursor, and has not expired by the
// node's duration (as Restore judges it); data is what Restore returns
// (the stored object, without "_written"). At most limit sessions, and
// the body stays within listPageBytes unless its one session alone is
// larger: a page always makes progress. done is true when no such session
// follows this page; otherwise send next (the last id of the page) as
// "after" to get the following one.
//
// Each page is a linearizable read (read index, as Node.Restore with
// default consistency), but pages are separate reads: a session saved or
// deleted while a client pages may or may not be listed. A page costs one
// pass over every stored session (fsm.State.List), whatever its prefix:
// listing is for administration and scs's Iterate, not a hot path.
const (
	// DefaultListLimit is a list page's size when the request gives none.
	DefaultListLimit = 1000
	// MaxListLimit bounds the sessions one list page may ask for.
	MaxListLimit = 10000
)

// listPageBytes bounds one list answer's body: well within the 1 MiB
// (transport.DefaultMaxFrame) a node's frames are held to. A variable so
// tests can lower it.
var listPageBytes = 512 << 10

// listRequest is the body of {"op":"list"}.
type listRequest struct {
	Op     string `json:"op"`
	Prefix string `json:"prefix"`
	After  string `json:"after"`
	Limit  *int   `json:"limit"` // nil: DefaultListLimit
}

// listedSession is one session of a list answer.
type listedSession struct {
	SID  string          `json:"sid"`
	Data json.RawMessage `json:"data"`
}

// listReply answers {"op":"list"}. appendListReply writes it by hand, to
// hold a page to its byte budget exactly; this type is its shape (tests
// decode answers with it).
type listReply struct {
	Sessions []listedSession `json:"sessions"`
	Next     string          `json:"next"`
	Done     bool            `json:"done"`
}

// parseListRequest checks a list request before anything else is done
// with it; every failure is CodeBadRequest saying what was wrong.
func parseListRequest(body []byte) (listRequest, int, error) {
	var req listRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields() // a misspelt "prefix" must not list everything
	if err := dec.Decode(&req); err != nil {
		return req, 0, transport.Errorf(transport.CodeBadRequest,
			`list: the request must be {"op":"list","prefix":STRING,"after":STRING,"limit":1..%d}: %v`, MaxListLimit, err)
	}
	limit := DefaultListLimit
	if req.Limit != nil {
		limit = *req.Limit
	}
	switch {
	case limit < 1 || limit > MaxListLimit:
		return req, 0, transport.Errorf(transport.CodeBadRequest, "list: limit %d is out of range: ask for 1 to %d sessions per page", limit, MaxListLimit)
	case len(req.Prefix) > fsm.MaxSIDLen:
		return req, 0, transport.Errorf(transport.CodeBadRequest, "list: prefix is %d bytes, longer than any session id (%d)", len(req.Prefix), fsm.MaxSIDLen)
	case len(req.After) > fsm.MaxSIDLen:
		return req, 0, transport.Errorf(transport.CodeBadRequest, "list: after is %d bytes, longer than any session id (%d)", len(req.After), fsm.MaxSIDLen)
	}
	return req, limit, nil
}

// adminList answers {"op":"list"} (see the top of this file) on the
// leader; a follower forwards it there, and the leader never forwards a
// peer's request again (transport.FromPeer).
func (n *Node) adminList(ctx context.Context, body []byte) ([]byte, error) {
	req, limit, err := parseListRequest(body)
	if err != nil {
		return nil, err
	}
	if err := n.awaitLeader(ctx); err != nil {
		return nil, err
	}
	if n.raft.State() != raft.Leader {
		if transport.FromPeer(ctx) {
			return nil, notLeader(n.raft)
		}
		if resp, forwarded, err := n.forward(ctx, &transport.Request{Op: transport.OpAdmin, Data: body}); forwarded {
			return resp.Data, err
		}
	}
	if err := n.reads.wait(ctx); err != nil {
		return nil, err
	}
	page, more := n.fsm.State.List(req.Prefix, req.After, limit, time.Now().UnixMilli(), n.cfg.Duration.Milliseconds())
	return appendListReply(nil, page, more, req.After, listPageBytes), nil
}

// appendListReply appends the list answer for page to dst, cutting the
// page where the body would exceed budget bytes (never before its first
// session). more says whether sessions follow page; after is the request's
// cursor, the answer's next when page is empty.
func appendListReply(dst []byte, page []fsm.ListEntry, more bool, after string, budget int) []byte {
	start := len(dst)
	dst = append(dst, `{"sessions":[`...)
	var nextJSON []byte // the last listed id
	for i, e := range page {
		sid, _ := json.Marshal(e.SID) // a string always encodes
		data := e.Record.Data
		if len(data) == 0 {
			data = []byte("{}")
		}
		size := len(`,{"sid":,"data":}`) + len(sid) + len(data)
		tail := len(`],"next":,"done":false}`) + len(sid)
		if i == len(page)-1 && !more {
			tail-- // "done":true
		}
		if i > 0 && len(dst)-start+size+tail > budget {
			more = true
			break
		}
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"sid":`...)
		dst = append(dst, sid...)
		dst = append(dst, `,"data":`...)
		dst = append(dst, data...)
		dst = append(dst, '}')
		nextJSON = sid
	}
	if nextJSON == nil {
		nextJSON, _ = json.Marshal(after)
	}
	dst = append(dst, `],"next":`...)
	dst = append(dst, nextJSON...)
	if more {
		dst = append(dst, `,"done":false}`...)
	} else {
		dst = append(dst, `,"done":true}`...)
	}
	return dst
}
