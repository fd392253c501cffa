package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"

	"github.com/hashicorp/go-hclog"

	"github.com/kadosession/kadosession/cluster"
)

// securityFlags are serve's TLS and token settings.
type securityFlags struct {
	cert, key, ca  string
	allowPlaintext bool
	tokenFile      string
	peerTokenFile  string
	// acceptPeerTokenFile is a second token accepted from nodes and admin
	// commands, for a rolling change of the peer token.
	acceptPeerTokenFile string
}

// apply loads the files named by the flags into cfg. Every problem names
// the flag and the file.
func (f *securityFlags) apply(cfg *cluster.Config) error {
	if f.cert != "" || f.key != "" || f.ca != "" {
		if f.cert == "" || f.key == "" || f.ca == "" {
			return fmt.Errorf("TLS needs all three of --tls-cert, --tls-key and --tls-ca")
		}
		pair, err := tls.LoadX509KeyPair(f.cert, f.key)
		if err != nil {
			return fmt.Errorf("--tls-cert %s / --tls-key %s: %v", f.cert, f.key, err)
		}
		pem, err := os.ReadFile(f.ca)
		if err != nil {
			return fmt.Errorf("--tls-ca: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("--tls-ca %s holds no PEM certificate", f.ca)
		}
		cfg.Server.TLS = &tls.Config{
			Certificates: []tls.Certificate{pair},
			ClientCAs:    pool,
			ClientAuth:   tls.VerifyClientCertIfGiven,
			MinVersion:   tls.VersionTLS12,
		}
		cfg.PeerTLS = &tls.Config{
			Certificates: []tls.Certificate{pair},
			RootCAs:      pool,
			MinVersion:   tls.VersionTLS12,
		}
		cfg.Server.AllowPlaintext = f.allowPlaintext
	} else if f.allowPlaintext {
		return fmt.Errorf("--tls-allow-plaintext only makes sense with TLS on (--tls-cert, --tls-key, --tls-ca)")
	}
	if f.tokenFile != "" {
		tok, err := readToken("--auth-token-file", f.tokenFile)
		if err != nil {
			return err
		}
		cfg.Server.Token = tok
	}
	if f.peerTokenFile != "" {
		tok, err := readToken("--peer-token-file", f.peerTokenFile)
		if err != nil {
			return err
		}
		if bytes.Equal(tok, cfg.Server.Token) {
			return fmt.Errorf("--peer-token-file %s holds the client token of --auth-token-file: the peer token sets nodes and admin commands apart from clients only if it differs", f.peerTokenFile)
		}
		cfg.Server.PeerToken = tok
	}
	if f.acceptPeerTokenFile != "" {
		tok, err := readToken("--accept-peer-token-file", f.acceptPeerTokenFile)
		if err != nil {
			return err
		}
		switch {
		case len(cfg.Server.PeersToken()) == 0:
			return fmt.Errorf("--accept-peer-token-file is for a rolling change of the token nodes present to each other, and this node presents none: give it --auth-token-file (moving from the client token to a peer token) or --peer-token-file (replacing a peer token)")
		case bytes.Equal(tok, cfg.Server.PeerToken):
			return fmt.Errorf("--accept-peer-token-file %s holds the token of --peer-token-file: give the token being replaced (after the first round of restarts) or the new one (in the first round)", f.acceptPeerTokenFile)
		case len(cfg.Server.PeerToken) == 0 && bytes.Equal(tok, cfg.Server.Token):
			return fmt.Errorf("--accept-peer-token-file %s holds the client token of --auth-token-file, which this node presents and accepts already: in the first round give the new peer token", f.acceptPeerTokenFile)
		}
		cfg.Server.AcceptPeerToken = tok
		if err := cfg.Server.CheckPeerTokens(); err != nil {
			return fmt.Errorf("--accept-peer-token-file %s: %v", f.acceptPeerTokenFile, err)
		}
	}
	return nil
}

// readToken reads the token in the file that flag names.
func readToken(flag, file string) ([]byte, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", flag, err)
	}
	tok := bytes.TrimSpace(b)
	switch {
	case len(tok) == 0:
		return nil, fmt.Errorf("%s %s is empty", flag, file)
	case len(tok) > 4096:
		return nil, fmt.Errorf("%s %s: the token is over 4096 bytes", flag, file)
	case len(tok) < 16:
		return nil, fmt.Errorf("%s %s: the token is only %d bytes; use at least 16 random bytes", flag, file, len(tok))
	}
	return tok, nil
}

// warnIfExposed logs loudly when the node listens beyond loopback with
// neither TLS nor a token: anyone who reaches the port can read and forge
// sessions.
func warnIfExposed(cfg *cluster.Config, log hclog.Logger) {
	host, _, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() || host == "localhost" {
		return
	}
	if cfg.Server.TLS == nil && len(cfg.Server.Token) == 0 {
		log.Warn("!!! listening on a non-loopback address with neither TLS nor a client token: anyone who reaches " +
			cfg.Listen + " can read and forge sessions; set --tls-cert/--tls-key/--tls-ca and --auth-token-file")
	} else if cfg.Server.TLS == nil {
		log.Warn("listening on a non-loopback address without TLS: the token and sessions cross the network in clear", "listen", cfg.Listen)
	} else if len(cfg.Server.Token) == 0 {
		log.Warn("listening on a non-loopback address without a client token: any TLS client can read and forge sessions", "listen", cfg.Listen)
	}
}
