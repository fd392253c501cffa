package cluster

import "time"

// peerWait is how long the node gives a call to another node (asking its
// status or term, a forwarder's dial, a hand-over's round) whose bound d
// suits the default raft timeouts: d, stretched by as much as the
// configured heartbeat or election timeout exceeds the default. An
// operator raises those for a slow link (README: 1 s on a WAN), and a
// fixed second then did not cover a new connection there: with 80 ms
// round trips and a SYN sent again after a second, every status asked
// timed out ("unreachable") and a stopping leader handed nothing over. A
// configuration shorter than the default keeps d. Safe for concurrent use
// (it only reads the configuration).
func (n *Node) peerWait(d time.Duration) time.Duration {
	return scaleToTimeouts(d, max(n.cfg.HeartbeatTimeout, n.cfg.ElectionTimeout))
}

// scaleToTimeouts is d times slowest/DefaultElectionTimeout, never less
// than d.
func scaleToTimeouts(d, slowest time.Duration) time.Duration {
	if slowest <= DefaultElectionTimeout {
		return d
	}
	return time.Duration(float64(d) * float64(slowest) / float64(DefaultElectionTimeout))
}
