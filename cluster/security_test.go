package cluster

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kadosession/kadosession/client"
	"github.com/kadosession/kadosession/internal/testnet"
	"github.com/kadosession/kadosession/transport"
)

// testCA is a throwaway certificate authority for TLS tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kadosession test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// issue signs a certificate for 127.0.0.1 usable as server and client.
func (ca *testCA) issue(t testing.TB, name string) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// tlsNode sets cfg up for TLS with a certificate from ca.
func tlsNode(cfg *Config, ca *testCA, cert tls.Certificate) {
	cfg.Server.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: ca.pool, ClientAuth: tls.VerifyClientCertIfGiven}
	cfg.PeerTLS = &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: ca.pool}
}

func TestTLSClusterWithMutualAuth(t *testing.T) {
	ca := newTestCA(t)
	tc := newTestCluster(t, 3, func(c *Config) { tlsNode(c, ca, ca.issue(t, c.ID)) })
	l := tc.nodes[tc.leader()]
	// A TLS client (no client certificate needed) writes through a follower.
	c, err := client.New(client.Config{Addrs: []string{tc.nodes[tc.follower()].Addr()}, TLSConfig: &tls.Config{RootCAs: ca.pool}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SaveRaw(context.Background(), "secure", []byte(`{"a":1}`)); err != nil {
		t.Fatal(err)
	}
	tc.waitSame()
	// Plaintext is refused with a clear answer, in either protocol.
	if got := kadoRequest(t, l.Addr(), []byte(kadoRestore)); !strings.Contains(got, "requires TLS") {
		t.Fatalf("plaintext Kado request: %s", got)
	}
	plain, _ := client.New(client.Config{Addrs: []string{l.Addr()}, MaxRetries: -1})
	defer plain.Close()
	if _, _, err := plain.RestoreRaw(context.Background(), "secure"); err == nil || !strings.Contains(err.Error(), "requires TLS") {
		t.Fatalf("plaintext native request: %v", err)
	}
	// A node whose certificate another CA signed cannot join.
	rogue := newTestCA(t)
	cfg := Config{ID: "rogue", Listen: "127.0.0.1:0", DataDir: t.TempDir(), Logger: testLogger(), Join: []string{l.Addr()}}
	tlsNode(&cfg, rogue, rogue.issue(t, "rogue"))
	n, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	time.Sleep(1500 * time.Millisecond)
	if v := tc.nodes[tc.leader()].voters(); v != 3 {
		t.Fatalf("a node with a foreign certificate was admitted: %d voters", v)
	}
	if n.Ready() {
		t.Fatal("the rogue node became ready")
	}
	// Raft traffic from a client certificate-less TLS connection is refused:
	// the leader never counts it.
	conn, err := tls.Dial("tcp", l.Addr(), &tls.Config{RootCAs: ca.pool})
	if err != nil {
		t.Fatal(err)
	}
	conn.Write([]byte{transport.MagicRaft})
	conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Fatal("raft connection without a client certificate was kept open")
	}
	conn.Close()
}

func TestClientTokenRequired(t *testing.T) {
	token := []byte("s3cret-token-0123456789")
	tc := newTestCluster(t, 3, func(c *Config) { c.Server.Token = token })
	f := tc.nodes[tc.follower()]
	ctx := context.Background()
	// With the token: works, also forwarded by a follower and through raft.
	c, _ := client.New(client.Config{Addrs: []string{f.Addr()}, Token: string(token)})
	defer c.Close()
	if err := c.SaveRaw(ctx, "t", []byte(`{"a":1}`)); err != nil {
		t.Fatal(err)
	}
	if got := kadoRequest(t, f.Addr(), []byte(`{"token":"`+string(token)+`","restore":{"sid":"t"}}`)); got != `{"status":"ok","result":{"a":1}}` {
		t.Fatalf("Kado JSON with the token: %s", got)
	}
	// Without it, or with a wrong one: refused, saying why.
	for _, tok := range []string{"", "wrong-token-0123456789"} {
		bad, _ := client.New(client.Config{Addrs: []string{f.Addr()}, Token: tok, MaxRetries: -1})
		_, _, err := bad.RestoreRaw(ctx, "t")
		bad.Close()
		if err == nil || !errors.Is(err, transport.ErrUnauthorized) && !strings.Contains(err.Error(), "unauthorized") {
			t.Fatalf("native with token %q: %v", tok, err)
		}
		req := `{"restore":{"sid":"t"}}`
		if tok != "" {
			req = `{"token":"` + tok + `","restore":{"sid":"t"}}`
		}
		if got := kadoRequest(t, f.Addr(), []byte(req)); !strings.Contains(got, "unauthorized") {
			t.Fatalf("Kado JSON with token %q: %s", tok, got)
		}
	}
	// A node that does not know the token cannot take part in raft.
	cfg := Config{ID: "intruder", Listen: "127.0.0.1:0", DataDir: t.TempDir(), Logger: testLogger(), Join: []string{f.Addr()}}
	n, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	time.Sleep(time.Second)
	if v := tc.nodes[tc.leader()].voters(); v != 3 {
		t.Fatalf("a node without the token was admitted: %d voters", v)
	}
}

// With a peer token the client token admits session operations only: raft
// and peer connections need the peer token, and so do admin requests
// (membership changes, backups, restores). An adversarial review showed a
// holder of the client token, which every app server has, could vote and
// append to the log (a planted entry overwrote an acknowledged save), and
// join or remove members.
func TestPeerTokenSetsNodesAndAdminApart(t *testing.T) {
	clientTok, peerTok := "client-token-0123456789", "peer-token-0123456789ab"
	tc := newTestCluster(t, 3, func(c *Config) {
		c.Server.Token, c.Server.PeerToken = []byte(clientTok), []byte(peerTok)
	})
	l, f := tc.nodes[tc.leader()], tc.nodes[tc.follower()]
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// Nodes joined, and forward writes, with the peer token.
	c, _ := client.New(client.Config{Addrs: []string{f.Addr()}, Token: clientTok})
	defer c.Close()
	if err := c.SaveRaw(ctx, "s", []byte(`{"a":1}`)); err != nil {
		t.Fatalf("a save through a follower with the client token: %v", err)
	}

	assertPeerTokenApart(t, ctx, l, f, clientTok, peerTok)

	// A node that knows only the client token is not admitted.
	n, err := Open(Config{ID: "intruder", Listen: "127.0.0.1:0", DataDir: t.TempDir(), Logger: testLogger(), Join: []string{f.Addr()},
		Server: transport.ServerConfig{Token: []byte(clientTok)}})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	time.Sleep(time.Second)
	if v := l.voters(); v != 3 {
		t.Fatalf("a node with the client token only was admitted: %d voters", v)
	}
}

// assertPeerTokenApart checks that the cluster of leader l and follower f
// refuses the client token on raft and peer connections and for admin
// requests, and takes the peer token on raft and for admin requests.
func assertPeerTokenApart(t *testing.T, ctx context.Context, l, f *Node, clientTok, peerTok string) {
	t.Helper()
	// Raft with the client token is refused; with the peer token kept.
	raftConn := func(tok string) error {
		conn, err := net.Dial("tcp", l.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.Write(transport.AppendRaftToken([]byte{transport.MagicRaft}, []byte(tok)))
		conn.SetReadDeadline(time.Now().Add(time.Second))
		_, err = conn.Read(make([]byte, 1))
		return err
	}
	if err := raftConn(clientTok); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a raft connection with the client token: %v, want it closed", err)
	}
	if err := raftConn(peerTok); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a raft connection with the peer token: %v, want it kept open", err)
	}

	// A peer connection with the client token is refused.
	pc, err := transport.Dial(ctx, f.Addr(), transport.ConnConfig{Magic: transport.MagicPeer, Token: clientTok})
	if err == nil {
		resp, rerr := pc.RoundTrip(ctx, &transport.Request{Op: transport.OpRestore, Consistency: transport.Stale, SID: "s"})
		pc.Close()
		if rerr == nil && resp.Err == nil {
			t.Fatalf("a peer connection with the client token served a read: %+v", resp)
		}
	}

	// Admin requests: refused with the client token, taken with the peer one.
	join := []byte(`{"op":"join","id":"x","address":"` + testnet.ClosedAddr(t) + `"}`)
	for _, tc := range []struct {
		tok  string
		body []byte
		want string
	}{
		{clientTok, join, "admin request"},
		{clientTok, []byte(`{"op":"remove","id":"n3"}`), "admin request"},
		{clientTok, []byte(`{"op":"backup-begin"}`), "admin request"},
		{peerTok, join, "no node answers"},
	} {
		conn, err := transport.Dial(ctx, f.Addr(), transport.ConnConfig{Token: tc.tok})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := conn.RoundTrip(ctx, &transport.Request{Op: transport.OpAdmin, Data: tc.body})
		conn.Close()
		if err != nil || resp.Err == nil || !strings.Contains(resp.Err.Message, tc.want) {
			t.Fatalf("%s with the %s token: %+v, %v; want %q", tc.body, map[bool]string{true: "client", false: "peer"}[tc.tok == clientTok], resp, err, tc.want)
		}
	}
	if v := l.voters(); v != 3 {
		t.Fatalf("%d voters after the refused requests", v)
	}

}

// With TLS and a peer token, a certificate the cluster's CA signed does not
// make a node by itself: an app server given one for mutual TLS could, on
// a raft or peer connection, vote and remove members (a review of the peer
// token). The peer token is needed as well.
func TestPeerTokenWithTLSNeedsTheTokenToo(t *testing.T) {
	ca := newTestCA(t)
	clientTok, peerTok := "client-token-0123456789", "peer-token-0123456789ab"
	tc := newTestCluster(t, 3, func(c *Config) {
		tlsNode(c, ca, ca.issue(t, c.ID))
		c.Server.Token, c.Server.PeerToken = []byte(clientTok), []byte(peerTok)
	})
	l, f := tc.nodes[tc.leader()], tc.nodes[tc.follower()]
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, _ := client.New(client.Config{Addrs: []string{f.Addr()}, Token: clientTok, TLSConfig: &tls.Config{RootCAs: ca.pool}})
	defer c.Close()
	if err := c.SaveRaw(ctx, "s", []byte(`{"a":1}`)); err != nil {
		t.Fatalf("a save through a follower: %v", err)
	}
	app := &tls.Config{RootCAs: ca.pool, Certificates: []tls.Certificate{ca.issue(t, "app")}}

	// Raft with the app's certificate and the client token: closed.
	conn, err := tls.Dial("tcp", l.Addr(), app)
	if err != nil {
		t.Fatal(err)
	}
	conn.Write(transport.AppendRaftToken([]byte{transport.MagicRaft}, []byte(clientTok)))
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a raft connection with the app's certificate and the client token: %v, want it closed", err)
	}
	conn.Close()

	// A peer connection with the app's certificate and the client token:
	// refused; with the peer token: a peer.
	for _, tc := range []struct {
		tok  string
		want bool
	}{{clientTok, false}, {"", false}, {peerTok, true}} {
		pc, err := transport.Dial(ctx, f.Addr(), transport.ConnConfig{Magic: transport.MagicPeer, TLSConfig: app, Token: tc.tok})
		var got error = err
		if err == nil {
			resp, rerr := pc.RoundTrip(ctx, &transport.Request{Op: transport.OpAdmin, Data: []byte(`{"op":"remove","id":"nobody"}`)})
			pc.Close()
			if got = rerr; rerr == nil && resp.Err != nil {
				got = resp.Err
			}
		}
		if refused := got != nil && strings.Contains(got.Error(), "unauthorized"); refused == tc.want {
			t.Fatalf("a peer connection with the app's certificate and token %q: %v; want taken %v", tc.tok, got, tc.want)
		}
	}
	if v := l.voters(); v != 3 {
		t.Fatalf("%d voters", v)
	}
}
