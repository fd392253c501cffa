package transport

import (
	"crypto/tls"
	"strings"
	"testing"
)

// CheckPeerTokens refuses the AcceptPeerToken combinations that cannot
// work, and a peer token length raft's first bytes could pass for while a
// node with TLS tells framed from unframed raft connections.
func TestCheckPeerTokens(t *testing.T) {
	client, peer := []byte("client-token-0123456789"), []byte("peer-token-0123456789ab")
	long := []byte(strings.Repeat("p", 130)) // 0x0082: rpcType 0, then a msgpack fixmap of 2
	for _, tc := range []struct {
		name string
		cfg  ServerConfig
		want string // "" for none
	}{
		{"nothing to change from", ServerConfig{AcceptPeerToken: peer}, "present none"},
		{"round 1", ServerConfig{Token: client, AcceptPeerToken: peer}, ""},
		{"round 1, the client token again", ServerConfig{Token: client, AcceptPeerToken: client}, "presents already"},
		{"round 2", ServerConfig{Token: client, PeerToken: peer, AcceptPeerToken: client}, ""},
		{"rotation, the same token", ServerConfig{Token: client, PeerToken: peer, AcceptPeerToken: peer}, "presents already"},
		{"round 1 with TLS", ServerConfig{TLS: &tls.Config{}, Token: client, AcceptPeerToken: peer}, ""},
		{"round 1 with TLS, an ambiguous length", ServerConfig{TLS: &tls.Config{}, Token: client, AcceptPeerToken: long}, "length"},
		{"round 2 with TLS, an ambiguous length", ServerConfig{TLS: &tls.Config{}, Token: client, PeerToken: long, AcceptPeerToken: client}, "length"},
		{"rotation with TLS: always framed", ServerConfig{TLS: &tls.Config{}, Token: client, PeerToken: peer, AcceptPeerToken: long}, ""},
		{"without TLS: always framed", ServerConfig{Token: client, AcceptPeerToken: long}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.CheckPeerTokens()
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("%v, want %q", err, tc.want)
			}
		})
	}
}
