package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
)

// listPageLimit is how many sessions List asks for per page; the node also
// holds each page's answer to about 512 KiB (cluster.MaxListLimit bounds
// what may be asked).
const listPageLimit = 1000

// listRequest is the body of the "list" admin op (cluster/list.go).
type listRequest struct {
	Op     string `json:"op"`
	Prefix string `json:"prefix"`
	After  string `json:"after"`
	Limit  int    `json:"limit"`
}

// listReply is the node's answer to one "list" page.
type listReply struct {
	Sessions []struct {
		SID  string          `json:"sid"`
		Data json.RawMessage `json:"data"`
	} `json:"sessions"`
	Next string `json:"next"`
	Done bool   `json:"done"`
}

// List returns every session whose id starts with prefix ("" for all) and
// that has not expired, by id, each map as Restore returns it: a non-nil
// map, empty when none matches, whose maps are the caller's. It is
// scsstore.Lister's List.
//
// It asks the cluster page by page (the "list" admin op, served by the
// leader; a follower forwards it), following leader hints and retrying
// like every other call. Each page is a linearizable read whatever
// Config.Consistency says, but the pages are separate reads: a session
// saved or deleted while List runs may or may not be in the answer. Each
// page costs the leader one pass over all its sessions, so List is for
// administration and scs's Iterate, not for every request; the answer is
// held in memory whole.
//
// It honours ctx between and during pages. An error means no answer (the
// partial listing is dropped): it wraps the failed call's error (compare
// with errors.Is against ErrBadRequest, ErrUnavailable, ctx.Err() and the
// rest). Safe for concurrent use.
func (s *Store) List(ctx context.Context, prefix string) (map[string]map[string]json.RawMessage, error) {
	out := map[string]map[string]json.RawMessage{}
	after := ""
	for page := 1; ; page++ {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("kadosession: list %q: %w", prefix, err)
		}
		body, _ := json.Marshal(listRequest{Op: "list", Prefix: prefix, After: after, Limit: listPageLimit}) // strings and an int always encode
		answer, err := s.Admin(ctx, body)
		if err != nil {
			return nil, fmt.Errorf("kadosession: list %q, page %d: %w", prefix, page, err)
		}
		var reply listReply
		if err := json.Unmarshal(answer, &reply); err != nil {
			return nil, fmt.Errorf("kadosession: list %q, page %d: the node's answer is not a list page: %v", prefix, page, err)
		}
		for _, sess := range reply.Sessions {
			var data map[string]json.RawMessage
			if err := json.Unmarshal(sess.Data, &data); err != nil || bytes.Equal(sess.Data, []byte("null")) {
				return nil, fmt.Errorf("kadosession: list %q, page %d: the node returned data for %q that is not a JSON object", prefix, page, sess.SID)
			}
			out[sess.SID] = data
		}
		if reply.Done {
			return out, nil
		}
		if len(reply.Sessions) == 0 || reply.Next <= after {
			// A node that neither finishes nor moves the cursor would
			// keep this loop going forever.
			return nil, fmt.Errorf("kadosession: list %q, page %d: the node's answer is neither done nor past %q", prefix, page, after)
		}
		after = reply.Next
	}
}
