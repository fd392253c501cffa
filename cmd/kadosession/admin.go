package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/kadosession/kadosession/cluster"
	"github.com/kadosession/kadosession/transport"
)

// connFlags are the flags every command that talks to a node shares: how to
// reach a node that has TLS or a token on.
type connFlags struct {
	ca, cert, key, tokenFile, peerTokenFile string
}

func (c *connFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.ca, "tls-ca", "", "CA certificate `FILE` (PEM): talk TLS to the node and verify it")
	fs.StringVar(&c.cert, "tls-cert", "", "client certificate `FILE` (PEM), if the node asks for one")
	fs.StringVar(&c.key, "tls-key", "", "client key `FILE` (PEM)")
	fs.StringVar(&c.tokenFile, "auth-token-file", "", "`FILE` holding the node's client token")
	fs.StringVar(&c.peerTokenFile, "peer-token-file", "", "`FILE` holding the nodes' peer token (their --peer-token-file), sent instead of the client token: join, remove, backup and restore need it where the nodes have one")
}

func (c *connFlags) config() (transport.ConnConfig, error) {
	var cfg transport.ConnConfig
	if c.ca != "" {
		pem, err := os.ReadFile(c.ca)
		if err != nil {
			return cfg, fmt.Errorf("--tls-ca: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return cfg, fmt.Errorf("--tls-ca %s holds no PEM certificate", c.ca)
		}
		cfg.TLSConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		if c.cert != "" || c.key != "" {
			pair, err := tls.LoadX509KeyPair(c.cert, c.key)
			if err != nil {
				return cfg, fmt.Errorf("--tls-cert/--tls-key: %v", err)
			}
			cfg.TLSConfig.Certificates = []tls.Certificate{pair}
		}
	}
	for _, f := range []struct{ flag, file string }{{"--auth-token-file", c.tokenFile}, {"--peer-token-file", c.peerTokenFile}} {
		if f.file == "" {
			continue
		}
		b, err := os.ReadFile(f.file)
		if err != nil {
			return cfg, fmt.Errorf("%s: %v", f.flag, err)
		}
		cfg.Token = strings.TrimSpace(string(b)) // the peer token, the later, wins
	}
	return cfg, nil
}

// adminSession opens one native connection to addr and returns an
// AdminFunc over it (each call bounded by perCall) and a closer.
func adminSession(addr string, cf *connFlags, perCall time.Duration) (cluster.AdminFunc, func(), error) {
	cfg, err := cf.config()
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := transport.Dial(ctx, addr, cfg)
	if err != nil {
		return nil, nil, err
	}
	if err := probeNode(c, addr); err != nil {
		c.Close()
		return nil, nil, err
	}
	call := func(ctx context.Context, body []byte) ([]byte, error) {
		ctx, cancel := context.WithTimeout(ctx, perCall)
		defer cancel()
		resp, err := c.RoundTrip(ctx, &transport.Request{Op: transport.OpAdmin, Data: body})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", addr, err)
		}
		if resp.Err != nil {
			return nil, fmt.Errorf("%s: %w", addr, resp.Err)
		}
		return resp.Data, nil
	}
	return call, func() { c.Close() }, nil
}

// probeWait bounds the first answer on an admin connection.
const probeWait = 5 * time.Second

// probeNode asks c's node a question any node answers at once, asking
// nobody else (its raft term; an error answer will do too), so that an
// admin command pointed at some other server's port says so within
// probeWait instead of waiting out its whole deadline (minutes for a
// backup) or quoting a "frame" size read from that server's banner; a
// node's --http port, at once (transport.AdminProbe).
func probeNode(c *transport.Conn, addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), probeWait)
	defer cancel()
	_, err := c.RoundTrip(ctx, &transport.Request{Op: transport.OpAdmin, Data: transport.AdminProbe(`{"op":"term"}`)})
	var answer *transport.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &answer):
		// A node's own refusal of the connection (too many connections,
		// shutting down): the protocol is right, the error says the rest.
		return fmt.Errorf("%s: %w", addr, err)
	case errors.Is(err, transport.ErrHTTPPort):
		return fmt.Errorf("%s: the server there %v: is that a node's --http (admin) port? Give its --listen port", addr, transport.ErrHTTPPort)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s: no answer within %s: is it a kadosession node's port (its --listen), and is the node running?", addr, probeWait)
	}
	return fmt.Errorf("%s: the server there does not speak kadosession's protocol (%w): is it a kadosession node's port (its --listen)?", addr, err)
}

// adminCall sends one OpAdmin request to addr and returns the JSON answer.
func adminCall(addr string, cf *connFlags, body []byte) ([]byte, error) {
	call, closeConn, err := adminSession(addr, cf, 15*time.Second)
	if err != nil {
		return nil, err
	}
	defer closeConn()
	return call(context.Background(), body)
}
