package cluster

import (
	"context"
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
	if user == "" {
		return 0, transport.Errorf(transport.CodeBadRequest, "user is empty")
	}
	r, err := n.commit.submit(ctx, fsm.Command{Op: fsm.OpDeleteUser, SID: user})
	return r.Count, wireError(err)
}
