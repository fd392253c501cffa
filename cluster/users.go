package cluster

import (
	"context"
	"crypto/sha256"
	"time"

	"github.com/kadosession/kadosession/fsm"
	"github.com/kadosession/kadosession/transport"
)

// UserSessions lists the live sessions tagged with user (fsm.UserKey),
// linearizably. Leader only: followers forward the admin op.
func (n *Node) UserSessions(ctx context.Context, user string) ([]string, error) {
	if user == "" {
		return nil, transport.Errorf(transport.CodeBadRequest, "user is empty")
	}
	if err := n.reads.wait(ctx); err != nil {
		return nil, err
	}
	sids := n.fsm.State.UserSessions(user, time.Now().UnixMilli(), n.cfg.Duration.Milliseconds())
	if sids == nil {
		sids = []string{}
	}
	return sids, nil
}

// RevokeUser deletes every session tagged with user, in one replicated
// command, and returns how many there were. Leader only.
func (n *Node) RevokeUser(ctx context.Context, user string) (int, error) {
	return n.revokeUser(ctx, user, fsm.RequestID(newNonce()))
}

// adminNonceMax bounds a revoke_user request's "nonce", in bytes.
const adminNonceMax = 64

// revokeID is the log's request id for a revoke_user call of user that
// carries nonce (client.RevokeUser sends one, the same for every retry):
// the same on every node, so that a retry reaching another leader is
// recognised. The user is part of it: a nonce reused for another user (by
// mistake) revokes that user too, instead of being answered with the
// first one's count. A call without a nonce gets an id of its own.
func revokeID(nonce, user string) (fsm.RequestID, error) {
	if nonce == "" {
		return fsm.RequestID(newNonce()), nil
	}
	if len(nonce) > adminNonceMax {
		return fsm.RequestID{}, transport.Errorf(transport.CodeBadRequest, "admin request's nonce is %d bytes, over %d", len(nonce), adminNonceMax)
	}
	sum := sha256.Sum256([]byte("revoke_user\x00" + nonce + "\x00" + user))
	return fsm.RequestID(sum[:16]), nil
}

// revokeUser runs a revoke once per id: a retry of one applied within
// fsm.DedupeWindow, by this leader or an earlier one, gets the first run's
// count (0 after the node restarted: State.RememberApplied), and one still
// in flight here waits for it. Run again, a revoke would log out the
// sessions the user made in between, and count only those.
func (n *Node) revokeUser(ctx context.Context, user string, id fsm.RequestID) (int, error) {
	if user == "" {
		return 0, transport.Errorf(transport.CodeBadRequest, "user is empty")
	}
	// A new leader first applies what earlier leaders committed, so that a
	// retry of a revoke they applied is recognised (State.Applied).
	if err := n.reads.barrier(ctx, n.raft.CurrentTerm()); err != nil {
		return 0, wireError(err)
	}
	if v, behind := n.cachedLogVersion(ctx); v < 1 {
		// Without its id, as builds before it ran it: a retry through
		// another leader may run it again (logversion.go).
		n.warnOlder("revoke_user runs without its request id until every member is upgraded: " + olderMember(behind, v))
		id = fsm.RequestID{}
	}
	r, err := n.commit.submit(ctx, fsm.Command{Op: fsm.OpDeleteUser, SID: user, ID: id})
	return r.Count, wireError(err)
}
